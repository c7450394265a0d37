"""Promise12: MetaImage pairs CaseXX.mhd / CaseXX_segmentation.mhd (with their .raw data) to NIfTI."""

import re
from pathlib import Path

import SimpleITK as sitk

from data_preparation.converters.common import (
    CaseSource,
    Converter,
    Discovery,
    LayoutError,
    examples,
    layout_error,
    pair_by_case,
    visible,
)
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


def unpacked_test_data(images: list[tuple[str, Path]], masks: list[tuple[str, Path]]) -> dict[Path, list[str]]:
    """Folder -> cases whose image there has no segmentation next to it, while a segmentation of the same
    case name lies elsewhere: the Promise12 test data (Case00-Case29, no segmentations) unpacked over
    the training data."""
    segmented = {case for case, _ in masks}
    next_to_mask = {(case, path.parent) for case, path in masks}
    found: dict[Path, list[str]] = {}
    for case, path in images:
        if case in segmented and (case, path.parent) not in next_to_mask:
            found.setdefault(path.parent, []).append(case)
    return found


def discover(source_dir: Path) -> Discovery:
    """Pair CaseXX.mhd with CaseXX_segmentation.mhd by case name, wherever they are below `source_dir`.

    `LayoutError` if there is no CaseXX.mhd, or if test data was unpacked over the training data.
    """
    files = _mhd_files(source_dir)
    images = [(m[1], p) for p in files if (m := IMAGE_NAME.match(p.name))]
    masks = [(m[1], p) for p in files if (m := MASK_NAME.match(p.name))]
    if not images and not masks:
        raise layout_error(source_dir, "no CaseXX.mhd file", LAYOUT)
    test_data = unpacked_test_data(images, masks)
    if test_data:
        raise LayoutError(
            "\n".join(
                f"{folder}: {len(cases)} image(s) without segmentation named like training cases "
                f"({examples(cases)}): this looks like the Promise12 test data unpacked over the training data "
                f"(images of the same names may have been overwritten). Unpack the test zip into a folder "
                f"named Test* (skipped) or leave it out, and unpack the training zips again"
                for folder, cases in test_data.items()
            )
        )
    return pair_by_case(SITE, images, masks)


def load_pair(case: CaseSource) -> tuple[sitk.Image, sitk.Image]:
    """Image as float32 and the segmentation as 0/1 on the same grid."""
    image = as_image(read_image(case.image))
    mask = binarize(read_image(case.mask))
    return image, snap_onto(mask, image, case.mask)


CONVERTER = Converter(SOURCE, (SITE,), discover, load_pair)
