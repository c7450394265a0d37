"""Read, validate and write 3D NIfTI volumes and image/mask pairs.

Volumes are always returned reoriented to the closest canonical RAS+ axes (nibabel's
`as_closest_canonical`, a pure permutation/flip, no resampling): array axis 0 runs to the patient's
Right, axis 1 to Anterior, axis 2 to Superior, whatever orientation the file was stored in.
"""

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np

from fedsm.io.atomic import atomic_path


def read_volume(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Load a 3D NIfTI file as (float32 array in RAS+ axes, 4x4 affine); errors name the file."""
    path = Path(path)
    try:
        image = nib.as_closest_canonical(nib.load(path))
        data = image.get_fdata(dtype=np.float32)
    except Exception as err:  # nibabel, gzip and zlib raise unrelated types for a bad file
        raise ValueError(f"{path}: cannot read NIfTI volume ({type(err).__name__}: {err})") from err
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3D volume, got shape {data.shape}")
    return data, image.affine


def read_pair(
    image_path: str | os.PathLike, mask_path: str | os.PathLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Load and validate an image/mask pair: (image float32, mask bool, image affine), both RAS+.

    The mask is foreground where its value is above 0.5 (covers 0/1, merged labels and 0/255).
    Raises ValueError naming the file at fault: unreadable, not 3D, shapes differ, non-finite
    image values, or a mask without foreground.
    """
    image, affine = read_volume(image_path)
    mask_values, _ = read_volume(mask_path)
    if image.shape != mask_values.shape:
        raise ValueError(
            f"{image_path}: image shape {image.shape} != mask shape {mask_values.shape} of {mask_path}"
        )
    if not np.isfinite(image).all():
        raise ValueError(f"{image_path}: image contains NaN or infinite values")
    mask = mask_values > 0.5
    if not mask.any():
        raise ValueError(f"{mask_path}: mask has no foreground voxels")
    return image, mask, affine


def write_volume(path: str | os.PathLike, array: np.ndarray, affine: np.ndarray) -> None:
    """Write `array` as a NIfTI file (gzip-compressed when the name ends in .gz), atomically."""
    path = Path(path)
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    payload = image.to_bytes()
    if path.name.endswith(".gz"):
        payload = gzip.compress(payload, compresslevel=1, mtime=0)
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)
