"""NCI-ISBI 2013: DICOM T2 images and NRRD masks (Training, Test, Leaderboard) into two sites.

Cases `Prostate3T-*` go to NCI_ISBI_3T, `ProstateDx-*` to NCI_ISBI_Dx. Mask label values
(central gland, peripheral zone) are merged and the mask is put on the image grid.

Where the mask goes: public pipelines ignore the NRRD header and copy the image geometry onto the
label voxels; this converter places the mask by its header (resampling in physical space). When
the NRRD's voxel grid has the image's size, both placements are computed; if they disagree
(Dice < `AGREEMENT_DICE`) the case fails, naming both geometries, unless `nrrd_geometry` says which
one to trust: "header" (resample by the NRRD header) or "image" (copy the image geometry).
"""

import re
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from data_preparation.converters.common import (
    CaseError,
    CaseSource,
    Converter,
    Discovery,
    layout_error,
    pair_by_case,
    require_dirs,
    visible,
)
from data_preparation.converters.volumes import (
    as_image,
    binarize,
    describe_grid,
    read_dicom_series,
    read_image,
    resample_nearest,
    resample_onto,
)
from data_preparation.known_defects import renamed_masks

SOURCE = "NCI_ISBI"
SITE_OF_PREFIX = {"Prostate3T": "NCI_ISBI_3T", "ProstateDx": "NCI_ISBI_Dx"}
CASE_NAME = re.compile(r"^(Prostate3T|ProstateDx)-\d+-\d+$")
TRUTH_SUFFIX = "_truth"
NRRD_GEOMETRIES = ("header", "image")
AGREEMENT_DICE = 0.95
LAYOUT = """Raw/NCI_ISBI/Image/<any folders>/<case>/<study>/<series>/*.dcm
    e.g. Image/manifest-*/Prostate-3T/Prostate3T-01-0001/..., Image/manifest-*/PROSTATE-DIAGNOSIS/ProstateDx-01-0001/...
Raw/NCI_ISBI/Mask/<any folders>/<case>.nrrd or <case>_truth.nrrd   (the label zips, unzipped)
    e.g. Mask/Training/, Mask/Test/, Mask/Leaderboard/"""


def site_of(case: str) -> str:
    """NCI_ISBI_3T or NCI_ISBI_Dx, from the case name prefix."""
    return SITE_OF_PREFIX[case.split("-", 1)[0]]


def mask_case(stem: str) -> str:
    """Case name of a mask file name without extension (known renames, then the `_truth` suffix)."""
    renamed = renamed_masks(SOURCE)
    if stem in renamed:
        return renamed[stem]
    return stem.removesuffix(TRUTH_SUFFIX)


def mask_files(mask_root: Path) -> tuple[list[tuple[str, Path]], dict[str, str]]:
    """(case, NRRD file) pairs below `mask_root`, a renamed (corrected) file replacing its case's other
    mask; and the files whose name is no case name (file name -> why)."""
    renamed = renamed_masks(SOURCE)
    files = visible(mask_root.rglob("*.nrrd"))
    corrected_cases = {renamed[p.stem] for p in files if p.stem in renamed}
    masks, failed = [], {}
    for path in files:
        case = mask_case(path.stem)
        if not CASE_NAME.match(case):
            failed[path.name] = f"mask {path}: file name is not an NCI-ISBI case name"
        elif path.stem in renamed or case not in corrected_cases:
            masks.append((case, path))
    return masks, failed


def discover(source_dir: Path) -> Discovery:
    """Pair image case folders with NRRD masks by case name; one Discovery for both sites.

    `LayoutError` if Image/ holds no case folder or Mask/ no NRRD file (e.g. the label zips still packed).
    """
    require_dirs(source_dir, ["Image", "Mask"], LAYOUT)
    images = [(p.name, p) for p in visible((source_dir / "Image").rglob("*")) if p.is_dir() and CASE_NAME.match(p.name)]
    masks, failed = mask_files(source_dir / "Mask")
    if not images:
        raise layout_error(source_dir / "Image", "no case folder (Prostate3T-XX-XXXX or ProstateDx-XX-XXXX)", LAYOUT)
    if not masks and not failed:
        raise layout_error(source_dir / "Mask", "no *.nrrd label file", LAYOUT)
    found = Discovery(failed=failed)
    for site in SITE_OF_PREFIX.values():
        paired = pair_by_case(
            site,
            [(case, path) for case, path in images if site_of(case) == site],
            [(case, path) for case, path in masks if site_of(case) == site],
        )
        found.cases += paired.cases
        found.failed.update(paired.failed)
    return found


def dice(a: sitk.Image, b: sitk.Image) -> float:
    """Dice overlap of the foregrounds of two masks on one grid (1.0 when both are empty)."""
    fa, fb = sitk.GetArrayViewFromImage(a) > 0, sitk.GetArrayViewFromImage(b) > 0
    total = int(fa.sum() + fb.sum())
    return 2.0 * int(np.logical_and(fa, fb).sum()) / total if total else 1.0


def place_mask(mask: sitk.Image, image: sitk.Image, mask_path: Path, nrrd_geometry: str | None = None) -> sitk.Image:
    """The mask on the image grid, placed by its NRRD header or by copying the image geometry (module docstring).

    `nrrd_geometry` None checks that both placements agree when the voxel grids have the same size.
    """
    same_size = mask.GetSize() == image.GetSize()
    if nrrd_geometry == "header" or (nrrd_geometry is None and not same_size):
        return resample_onto(mask, image, mask_path)
    geometries = f"NRRD header {describe_grid(mask)}; image {describe_grid(image)}"
    if not same_size:
        raise CaseError(f"cannot copy the image geometry onto mask {mask_path}: the sizes differ ({geometries})")
    copied = sitk.Image(mask)
    copied.CopyInformation(image)
    if nrrd_geometry == "image":
        return copied
    by_header = resample_nearest(mask, image)
    agreement = dice(by_header, copied)
    if agreement < AGREEMENT_DICE:
        raise CaseError(
            f"mask {mask_path}: placed by its NRRD header it overlaps the image-geometry copy of its voxels "
            f"with Dice {agreement:.3f} (< {AGREEMENT_DICE}); {geometries}. Check the case and choose with "
            f"--nrrd-geometry {' or '.join(NRRD_GEOMETRIES)}"
        )
    return by_header


def load_pair(case: CaseSource, nrrd_geometry: str | None = None) -> tuple[sitk.Image, sitk.Image]:
    """The case's DICOM series as float32 and its NRRD labels merged to 0/1, placed on the image grid."""
    image = as_image(read_dicom_series(case.image))
    mask = binarize(read_image(case.mask))
    return image, place_mask(mask, image, case.mask, nrrd_geometry)


CONVERTER = Converter(SOURCE, tuple(SITE_OF_PREFIX.values()), discover, load_pair)


def converter(nrrd_geometry: str | None) -> Converter:
    """The NCI-ISBI converter placing masks as `nrrd_geometry` says (None: check that both placements agree)."""
    return replace(CONVERTER, load_pair=partial(load_pair, nrrd_geometry=nrrd_geometry))
