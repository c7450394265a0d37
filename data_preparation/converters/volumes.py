"""Reading raw volumes with SimpleITK, putting a mask on its image's grid, writing NIfTI.

SimpleITK keeps geometry in DICOM's LPS patient coordinates; NIfTI files are written in RAS by
`data_preparation.nifti_pairs.write_volume`, and `to_nifti` converts between the two.
"""

import os
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk

from data_preparation.converters.common import CaseError
from data_preparation.nifti_pairs import write_volume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# Tolerances for "the same grid" between an image and a mask stored separately (DICOM keeps
# positions as decimal strings, so equal grids can differ in the last digits).
SPACING_RTOL = 1e-3
DIRECTION_ATOL = 1e-3
ORIGIN_TOL_VOXELS = 0.1


def read_image(path: Path) -> sitk.Image:
    """Any file SimpleITK reads (NIfTI, MHD/RAW, NRRD, ...); errors name the file."""
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise CaseError(f"cannot read {path}: {_itk_message(err)}") from err


def dicom_series(folder: Path) -> dict[str, list[str]]:
    """SeriesInstanceUID -> sorted slice files of every DICOM series in `folder` and below."""
    reader = sitk.ImageSeriesReader()
    series: dict[str, list[str]] = {}
    for directory, _, files in sorted(os.walk(folder)):
        if not files:
            continue
        for uid in reader.GetGDCMSeriesIDs(directory):
            series.setdefault(uid, []).extend(reader.GetGDCMSeriesFileNames(directory, uid))
    return series


def describe_series(series: dict[str, list[str]]) -> str:
    """Each series as 'UID "description" (N files in folder)', for messages."""
    described = []
    for uid, files in series.items():
        description = pydicom.dcmread(files[0], stop_before_pixels=True, specific_tags=["SeriesDescription"])
        described.append(
            f'{uid} "{description.get("SeriesDescription", "")}" ({len(files)} files in {Path(files[0]).parent})'
        )
    return "; ".join(described)


def read_dicom_series(folder: Path, series_uid: str | None = None) -> sitk.Image:
    """The DICOM series in `folder` (searched recursively): the only one, or the one with `series_uid`."""
    series = dicom_series(folder)
    if series_uid is None:
        if len(series) != 1:
            raise CaseError(f"expected one DICOM series in {folder}, found {len(series)}: {describe_series(series)}")
        (files,) = series.values()
    elif series_uid in series:
        files = series[series_uid]
    else:
        raise CaseError(f"DICOM series {series_uid} not found in {folder}")
    return read_series_files(files)


def read_series_files(files: list[str]) -> sitk.Image:
    """One DICOM series from its slice files (as `dicom_series` lists them); errors name the folder."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError as err:
        raise CaseError(f"cannot read DICOM series in {Path(files[0]).parent}: {_itk_message(err)}") from err


def as_image(image: sitk.Image) -> sitk.Image:
    """Intensities as float32."""
    return sitk.Cast(image, sitk.sitkFloat32)


def binarize(mask: sitk.Image) -> sitk.Image:
    """uint8 mask: 1 wherever the label value is above 0 (merges all label values), else 0."""
    return sitk.Cast(mask > 0, sitk.sitkUInt8)


def describe_grid(image: sitk.Image) -> str:
    """Size, spacing, origin and direction in one line, for messages."""
    spacing = ", ".join(f"{value:.4g}" for value in image.GetSpacing())
    origin = ", ".join(f"{value:.4g}" for value in image.GetOrigin())
    direction = ", ".join(f"{value:.3g}" for value in image.GetDirection())
    size = "x".join(str(value) for value in image.GetSize())
    return f"size {size}, spacing ({spacing}), origin ({origin}), direction ({direction})"


def same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    """Whether two images share size and, within small tolerances, spacing, direction and origin."""
    if a.GetSize() != b.GetSize():
        return False
    offset = np.linalg.norm(np.subtract(a.GetOrigin(), b.GetOrigin()))
    return (
        np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=SPACING_RTOL, atol=0.0)
        and np.allclose(a.GetDirection(), b.GetDirection(), rtol=0.0, atol=DIRECTION_ATOL)
        and offset <= ORIGIN_TOL_VOXELS * min(a.GetSpacing())
    )


def snap_onto(mask: sitk.Image, image: sitk.Image, mask_path: Path) -> sitk.Image:
    """The mask with the image's exact geometry; `CaseError` if their grids differ beyond tolerance."""
    if not same_grid(mask, image):
        raise CaseError(
            f"image and mask grids disagree for mask {mask_path}: "
            f"image {describe_grid(image)}; mask {describe_grid(mask)}"
        )
    snapped = sitk.Image(mask)
    snapped.CopyInformation(image)
    return snapped


def index_to_lps(image: sitk.Image) -> np.ndarray:
    """4x4 matrix from (x, y, z) voxel index to LPS millimetres."""
    matrix = np.eye(4)
    matrix[:3, :3] = np.reshape(image.GetDirection(), (3, 3)) @ np.diag(image.GetSpacing())
    matrix[:3, 3] = image.GetOrigin()
    return matrix


def foreground_outside(mask: sitk.Image, reference: sitk.Image) -> int:
    """How many foreground voxel centres of `mask` fall outside the voxels of `reference`."""
    indices_zyx = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)
    if indices_zyx.size == 0:
        return 0
    homogeneous = np.c_[indices_zyx[:, ::-1], np.ones(len(indices_zyx))].T
    in_reference = (np.linalg.inv(index_to_lps(reference)) @ index_to_lps(mask) @ homogeneous)[:3].T
    upper = np.asarray(reference.GetSize()) - 0.5
    return int(np.sum(np.any((in_reference < -0.5) | (in_reference > upper), axis=1)))


def resample_nearest(mask: sitk.Image, image: sitk.Image) -> sitk.Image:
    """Nearest-neighbour resampling of a 0/1 mask onto the image grid (physical coordinates), unchecked."""
    return sitk.Resample(mask, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def resample_onto(mask: sitk.Image, image: sitk.Image, mask_path: Path) -> sitk.Image:
    """`resample_nearest`, with a `CaseError` if part of the mask's foreground lies outside the image volume."""
    outside = foreground_outside(mask, image)
    if outside:
        raise CaseError(
            f"image and mask grids disagree for mask {mask_path}: {outside} foreground voxels lie outside "
            f"the image volume (image {describe_grid(image)}; mask {describe_grid(mask)})"
        )
    return resample_nearest(mask, image)


def to_nifti(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """(array indexed x, y, z; RAS affine) of a SimpleITK image, as NIfTI stores them."""
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0), LPS_TO_RAS @ index_to_lps(image)


def write_nifti(image: sitk.Image, target: Path) -> None:
    """Write `image` as (gzip) NIfTI at `target`, atomically."""
    array, affine = to_nifti(image)
    write_volume(target, array, affine)


def _itk_message(err: Exception) -> str:
    """The message of a SimpleITK error without its source-file location."""
    errors = [line.split("ERROR:", 1)[1].strip() for line in str(err).splitlines() if "ERROR:" in line]
    return " ".join(errors) or str(err)
