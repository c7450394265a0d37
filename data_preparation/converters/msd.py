"""MSD Task05 Prostate: 4D NIfTI (T2, ADC) images, keep channel 0; labels 1 and 2 merged into one mask."""

from pathlib import Path

import SimpleITK as sitk

from data_preparation.converters.common import (
    CaseError,
    CaseSource,
    Converter,
    Discovery,
    pair_by_case,
    require_dirs,
    visible,
)
from data_preparation.converters.volumes import as_image, binarize, read_image, snap_onto

SOURCE = "MSD"
SITE = "MSD"
TASK_DIR = "Task05_Prostate"
T2_CHANNEL = 0
LAYOUT = """Raw/MSD/Task05_Prostate/imagesTr/prostate_XX.nii.gz   (4D: x, y, z, channel 0 = T2, 1 = ADC)
Raw/MSD/Task05_Prostate/labelsTr/prostate_XX.nii.gz   (labels 1 and 2)"""
NIFTI_SUFFIX = ".nii.gz"


def _nifti_cases(folder: Path) -> list[tuple[str, Path]]:
    """(case, path) of the visible NIfTI files in `folder`."""
    return [(p.name[: -len(NIFTI_SUFFIX)], p) for p in visible(folder.glob(f"*{NIFTI_SUFFIX}"))]


def discover(source_dir: Path) -> Discovery:
    """Pair imagesTr and labelsTr files by name (imagesTs has no labels and is not used)."""
    task = source_dir / TASK_DIR
    require_dirs(source_dir, [f"{TASK_DIR}/imagesTr", f"{TASK_DIR}/labelsTr"], LAYOUT)
    return pair_by_case(SITE, _nifti_cases(task / "imagesTr"), _nifti_cases(task / "labelsTr"))


def channel(image: sitk.Image, index: int, path: Path) -> sitk.Image:
    """The 3D volume of channel `index` of a 4D image."""
    size = list(image.GetSize())
    if image.GetDimension() != 4 or index >= size[3]:
        raise CaseError(f"{path}: expected a 4D image with a channel {index}, got size {tuple(size)}")
    return sitk.Extract(image, size[:3] + [0], [0, 0, 0, index], sitk.ExtractImageFilter.DIRECTIONCOLLAPSETOSUBMATRIX)


def load_pair(case: CaseSource) -> tuple[sitk.Image, sitk.Image]:
    """T2 channel as float32 and the merged labels as 0/1 on the same grid."""
    image = as_image(channel(read_image(case.image), T2_CHANNEL, case.image))
    mask = binarize(read_image(case.mask))
    return image, snap_onto(mask, image, case.mask)


CONVERTER = Converter(SOURCE, (SITE,), discover, load_pair)
