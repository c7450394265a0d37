"""I2CVB: GE (1.5 T) and Siemens (3 T) DICOM patients, T2W images and prostate masks, into one site."""

from pathlib import Path

import SimpleITK as sitk

from data_preparation.converters.common import (
    CaseSource,
    Converter,
    Discovery,
    layout_error,
    pair_by_case,
    visible,
)
from data_preparation.converters.volumes import as_image, binarize, read_dicom_series, snap_onto

SOURCE = "I2CVB"
SITE = "I2CVB"
VENDORS = ("GE", "Siemens")
IMAGE_DIR = Path("T2W")
MASK_DIR = Path("GT") / "prostate"
LAYOUT = """Raw/I2CVB/GE/<patient>/T2W/<DICOM slices>
Raw/I2CVB/GE/<patient>/GT/prostate/<DICOM slices>
Raw/I2CVB/Siemens/<patient>/... (same; at least one of GE, Siemens)"""


def case_name(patient_dir: Path) -> str:
    """Case name of a patient folder: its name with spaces as underscores ('Patient 383' -> 'Patient_383')."""
    return patient_dir.name.replace(" ", "_")


def discover(source_dir: Path) -> Discovery:
    """Pair each patient's T2W series with its GT/prostate series, over both vendors."""
    vendors = [source_dir / vendor for vendor in VENDORS if (source_dir / vendor).is_dir()]
    if not vendors:
        raise layout_error(source_dir, f"neither {' nor '.join(VENDORS)} folder", LAYOUT)
    patients = [path for vendor in vendors for path in visible(vendor.iterdir()) if path.is_dir()]
    images = [(case_name(p), p / IMAGE_DIR) for p in patients if (p / IMAGE_DIR).is_dir()]
    masks = [(case_name(p), p / MASK_DIR) for p in patients if (p / MASK_DIR).is_dir()]
    found = pair_by_case(SITE, images, masks)
    for patient in patients:
        ground_truth = patient / MASK_DIR.parent
        if ground_truth.is_dir() and not (patient / MASK_DIR).is_dir():
            entries = ", ".join(path.name for path in visible(ground_truth.iterdir())) or "nothing"
            found.failed[case_name(patient)] = (
                f"{ground_truth}: no {MASK_DIR.name} folder; expected the prostate mask series in "
                f"{patient / MASK_DIR}, found {entries}"
            )
        elif not (patient / IMAGE_DIR).is_dir() and not (patient / MASK_DIR).is_dir():
            found.failed[case_name(patient)] = f"{patient}: neither {IMAGE_DIR} nor {MASK_DIR} folder"
    return found


def load_pair(case: CaseSource) -> tuple[sitk.Image, sitk.Image]:
    """T2W series as float32 and the GT series thresholded to 0/1 on the same grid."""
    image = as_image(read_dicom_series(case.image))
    mask = binarize(read_dicom_series(case.mask))
    return image, snap_onto(mask, image, case.mask)


CONVERTER = Converter(SOURCE, (SITE,), discover, load_pair)
