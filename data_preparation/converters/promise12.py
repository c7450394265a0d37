"""Promise12: MetaImage pairs CaseXX.mhd / CaseXX_segmentation.mhd (with their .raw data) to NIfTI."""

import re
from pathlib import Path

import SimpleITK as sitk

from data_preparation.converters.common import CaseSource, Converter, Discovery, LayoutError, pair_by_case, visible
from data_preparation.converters.volumes import as_image, binarize, read_image, snap_onto

SOURCE = "Promise12"
SITE = "Promise12"
IMAGE_NAME = re.compile(r"^(Case\d+)\.mhd$")
MASK_NAME = re.compile(r"^(Case\d+)_segmentation\.mhd$")
TEST_FOLDER_PREFIX = "test"
LAYOUT = """Raw/Promise12/<any folders>/CaseXX.mhd                (+ CaseXX.raw)
Raw/Promise12/<any folders>/CaseXX_segmentation.mhd   (+ CaseXX_segmentation.raw)
e.g. TrainingData_Part1..3/ or one flat folder; folders whose name starts with "Test" are skipped"""


def _mhd_files(source_dir: Path) -> list[Path]:
    """Visible .mhd files below `source_dir`, outside folders whose name starts with 'Test' (no masks there)."""
    return [
        path
        for path in visible(source_dir.rglob("*.mhd"))
        if not any(part.lower().startswith(TEST_FOLDER_PREFIX) for part in path.relative_to(source_dir).parts[:-1])
    ]


def discover(source_dir: Path) -> Discovery:
    """Pair CaseXX.mhd with CaseXX_segmentation.mhd by case name, wherever they are below `source_dir`."""
    files = _mhd_files(source_dir)
    images = [(m[1], p) for p in files if (m := IMAGE_NAME.match(p.name))]
    masks = [(m[1], p) for p in files if (m := MASK_NAME.match(p.name))]
    if not images and not masks:
        raise LayoutError(f"{source_dir}: no CaseXX.mhd files found; expected layout:\n{LAYOUT}")
    return pair_by_case(SITE, images, masks)


def load_pair(case: CaseSource) -> tuple[sitk.Image, sitk.Image]:
    """Image as float32 and the segmentation as 0/1 on the same grid."""
    image = as_image(read_image(case.image))
    mask = binarize(read_image(case.mask))
    return image, snap_onto(mask, image, case.mask)


CONVERTER = Converter(SOURCE, (SITE,), discover, load_pair)
