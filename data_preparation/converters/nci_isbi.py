"""NCI-ISBI 2013: DICOM T2 images and NRRD masks (Training, Test, Leaderboard) into two sites.

Cases `Prostate3T-*` go to NCI_ISBI_3T, `ProstateDx-*` to NCI_ISBI_Dx. Mask label values
(central gland, peripheral zone) are merged and the mask is resampled onto the image grid.
"""

import re
from pathlib import Path

import SimpleITK as sitk

from data_preparation.converters.common import CaseSource, Converter, Discovery, pair_by_case, require_dirs, visible
from data_preparation.converters.volumes import as_image, binarize, read_dicom_series, read_image, resample_onto
from data_preparation.known_defects import renamed_masks

SOURCE = "NCI_ISBI"
SITE_OF_PREFIX = {"Prostate3T": "NCI_ISBI_3T", "ProstateDx": "NCI_ISBI_Dx"}
CASE_NAME = re.compile(r"^(Prostate3T|ProstateDx)-\d+-\d+$")
TRUTH_SUFFIX = "_truth"
LAYOUT = """Raw/NCI_ISBI/Image/<any folders>/<case>/<study>/<series>/*.dcm
    e.g. Image/manifest-*/Prostate-3T/Prostate3T-01-0001/..., Image/manifest-*/PROSTATE-DIAGNOSIS/ProstateDx-01-0001/...
Raw/NCI_ISBI/Mask/<any folders>/<case>.nrrd or <case>_truth.nrrd
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
    """Pair image case folders with NRRD masks by case name; one Discovery for both sites."""
    require_dirs(source_dir, ["Image", "Mask"], LAYOUT)
    images = [(p.name, p) for p in visible((source_dir / "Image").rglob("*")) if p.is_dir() and CASE_NAME.match(p.name)]
    masks, failed = mask_files(source_dir / "Mask")
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


def load_pair(case: CaseSource) -> tuple[sitk.Image, sitk.Image]:
    """The case's DICOM series as float32 and its NRRD labels merged to 0/1, resampled onto the image grid."""
    image = as_image(read_dicom_series(case.image))
    mask = binarize(read_image(case.mask))
    return image, resample_onto(mask, image, case.mask)


CONVERTER = Converter(SOURCE, tuple(SITE_OF_PREFIX.values()), discover, load_pair)
