"""Cut 3D NIfTI image/mask pairs into 2D PNG slices of the prostate, one folder per case.

Input:  <dataset_dir>/<site>/Image/<case>.nii.gz and <dataset_dir>/<site>/Mask/<case>.nii.gz
Output: <dataset_2d_dir>/<site>/<case>/Image/<zzz>.png and .../Mask/<zzz>.png

Only axial slices whose mask has foreground are written. Image PNG = intensity / 2048, clipped to
[0, 1], times 255, truncated to an integer as the reference's conversion does; mask PNG = 0 / 255.

Orientation: volumes are read in RAS+ axes (see `nifti_pairs`), so `zzz` is the index along the
superior axis and every axial slice is a [x, y] array with x toward the patient's Right and y toward
Anterior. `to_viewing_orientation` turns it into the radiological view: anterior at the top, the
patient's right on the viewer's left, i.e. view[row, col] = slice[nx-1-col, ny-1-row]
(= np.fliplr(np.rot90(slice))). Image and mask get the same transform.
"""

import argparse
import logging
import os
import shutil
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from data_preparation.nifti_pairs import read_pair
from fedsm.io.progress import progress

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def to_uint8_image(slice2d: np.ndarray, scale: float = 2048.0) -> np.ndarray:
    """Map intensities to uint8 as the reference does: value / scale capped at 1, times 255 (in float64),
    then, like PIL's conversion of a float image to 8 bits, stored as float32 and truncated into 0..255.

    E.g. with scale 2048: 1024 -> 127 (127.5 truncated), 2047 -> 254, >= 2048 -> 255, negatives -> 0.
    Expects finite values.
    """
    scaled = (np.minimum(np.asarray(slice2d, dtype=np.float64) / scale, 1.0) * 255.0).astype(np.float32)
    return np.trunc(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)


def to_uint8_mask(mask2d: np.ndarray) -> np.ndarray:
    """Boolean (or 0/1) mask to a 0/255 uint8 image."""
    return np.where(np.asarray(mask2d) > 0, 255, 0).astype(np.uint8)


def to_viewing_orientation(slice2d: np.ndarray) -> np.ndarray:
    """RAS+ axial slice [x, y] to radiological view [row, col]: anterior up, patient right on the left."""
    return np.ascontiguousarray(np.asarray(slice2d)[::-1, ::-1].T)


def foreground_slices(image: np.ndarray, mask: np.ndarray) -> list[int]:
    """Indices along the last (axial) axis where `mask` has foreground; shapes must match."""
    if image.shape != mask.shape:
        raise ValueError(f"image shape {image.shape} != mask shape {mask.shape}")
    per_slice = np.asarray(mask).reshape(-1, mask.shape[-1]) > 0
    return [int(z) for z in np.flatnonzero(per_slice.any(axis=0))]


def _case_name(path: Path) -> str | None:
    """Case name of a NIfTI file (name without its NIfTI suffix), None for other files."""
    if path.name.startswith("."):
        return None
    for suffix in NIFTI_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return None


def _nifti_files(folder: Path) -> dict[str, Path]:
    """Case name -> NIfTI file in `folder`; errors name the folder or the clashing files."""
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such folder")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        case = _case_name(path)
        if case is None:
            continue
        if case in files:
            raise ValueError(f"{path}: same case name as {files[case]}")
        files[case] = path
    return files


def pair_cases(image_dir: str | os.PathLike, mask_dir: str | os.PathLike) -> list[tuple[str, Path, Path]]:
    """Pair image and mask NIfTI files by case name (file name without .nii.gz), sorted by case.

    Raises ValueError naming every file without a partner, or when there is no case at all.
    """
    images = _nifti_files(Path(image_dir))
    masks = _nifti_files(Path(mask_dir))
    unpaired = [str(images[c]) for c in sorted(images.keys() - masks.keys())]
    unpaired += [str(masks[c]) for c in sorted(masks.keys() - images.keys())]
    if unpaired:
        raise ValueError(f"files without an image/mask partner of the same name: {', '.join(unpaired)}")
    if not images:
        raise ValueError(f"{image_dir}: no NIfTI files ({' or '.join(NIFTI_SUFFIXES)})")
    return [(case, images[case], masks[case]) for case in sorted(images)]


def _hidden_sibling(target: Path, tag: str) -> Path:
    """A unique hidden path beside `target`, ignored by readers of the dataset."""
    return target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.{tag}")


def _replace_dir(new_dir: Path, target: Path) -> None:
    """Move the complete folder `new_dir` to `target`, replacing an existing `target`."""
    if not target.exists():
        os.replace(new_dir, target)
        return
    old = _hidden_sibling(target, "old")
    os.replace(target, old)
    os.replace(new_dir, target)
    shutil.rmtree(old)


def slice_case(
    image_path: str | os.PathLike, mask_path: str | os.PathLike, case_out_dir: str | os.PathLike
) -> int:
    """Write the foreground axial slices of one case as PNGs; return the number of slices.

    The case is written into a hidden temporary folder that is renamed onto `case_out_dir` only when
    complete (an existing folder is replaced), so a half-written case never exists.
    Raises ValueError naming the file at fault (see `read_pair`).
    """
    image, mask, _ = read_pair(image_path, mask_path)
    slices = foreground_slices(image, mask)
    case_out_dir = Path(case_out_dir)
    case_out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = _hidden_sibling(case_out_dir, "tmp")
    try:
        (tmp_dir / "Image").mkdir(parents=True)
        (tmp_dir / "Mask").mkdir()
        for z in slices:
            name = f"{z:03d}.png"
            Image.fromarray(to_viewing_orientation(to_uint8_image(image[:, :, z]))).save(tmp_dir / "Image" / name)
            Image.fromarray(to_viewing_orientation(to_uint8_mask(mask[:, :, z]))).save(tmp_dir / "Mask" / name)
        _replace_dir(tmp_dir, case_out_dir)
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir)
    return len(slices)


@dataclass
class SiteSlices:
    """Outcome of slicing one site: slices written per case, cases skipped, errors per failed case."""

    site: str
    cases: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def slice_site(
    dataset_dir: str | os.PathLike, site: str, dataset_2d_dir: str | os.PathLike, overwrite: bool = False
) -> SiteSlices:
    """Slice every case of `<dataset_dir>/<site>` into `<dataset_2d_dir>/<site>/<case>`.

    Cases whose output folder exists are skipped unless `overwrite`. A failing case is logged and
    recorded in `failed`; the other cases go on. Pairing errors (a file without partner) raise.
    """
    site_dir = Path(dataset_dir) / site
    pairs = pair_cases(site_dir / "Image", site_dir / "Mask")
    result = SiteSlices(site)
    for case, image_path, mask_path in progress(pairs, desc=f"slicing {site}", unit="case"):
        case_out_dir = Path(dataset_2d_dir) / site / case
        if case_out_dir.exists() and not overwrite:
            result.skipped.append(case)
            continue
        try:
            result.cases[case] = slice_case(image_path, mask_path, case_out_dir)
        except (ValueError, OSError) as err:
            logger.error("%s: case %s failed: %s", site, case, err)
            result.failed[case] = str(err)
    logger.info(
        "%s: %d cases sliced (%d slices), %d skipped (already there), %d failed",
        site, len(result.cases), sum(result.cases.values()), len(result.skipped), len(result.failed),
    )
    return result


def main(argv: list[str] | None = None) -> int:
    """CLI: slice the given sites of a 3D dataset; exit status 1 when any case failed."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset-dir", required=True, type=Path, help="folder holding <site>/Image and <site>/Mask")
    parser.add_argument("--output", required=True, type=Path, help="2D dataset folder to write")
    parser.add_argument("--sites", nargs="+", required=True, help="site folder names")
    parser.add_argument("--overwrite", action="store_true", help="re-slice cases whose output already exists")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    results = [slice_site(args.dataset_dir, site, args.output, args.overwrite) for site in args.sites]
    for result in results:
        print(
            f"{result.site}: {len(result.cases)} cases sliced ({sum(result.cases.values())} slices), "
            f"{len(result.skipped)} skipped, {len(result.failed)} failed"
        )
    return 1 if any(result.failed for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
