"""PROSTATEx: DICOM T2 images plus DICOM-SEG zone masks, segments merged onto the image grid.

The SEG names the series it was drawn on (ReferencedSeriesSequence); that series is the image.
Zone segments are merged into one prostate mask. A urethra segment only counts on slices where
another segment is present, since other prostate protocols leave the urethra outside the gland.
"""

import re
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError

from data_preparation.converters.common import (
    CaseError,
    CaseSource,
    Converter,
    Discovery,
    pair_by_case,
    require_dirs,
    visible,
)
from data_preparation.converters.volumes import as_image, read_dicom_series, resample_onto

SOURCE = "PROSTATEx"
SITE = "PROSTATEx"
CASE_NAME = re.compile(r"^ProstateX-\d+$")
URETHRA = "urethra"
LAYOUT = """Raw/PROSTATEx/Image/<any folders>/ProstateX-XXXX/<study>/<series>/*.dcm   (the T2 series)
Raw/PROSTATEx/Mask/<any folders>/ProstateX-XXXX/<study>/<series>/*.dcm    (one DICOM-SEG per case)"""


def _case_dirs(root: Path) -> list[tuple[str, Path]]:
    """(case, folder) of the folders named like a PROSTATEx case below `root`."""
    return [(p.name, p) for p in visible(root.rglob("ProstateX-*")) if p.is_dir() and CASE_NAME.match(p.name)]


def discover(source_dir: Path) -> Discovery:
    """Pair image and mask case folders by case name."""
    require_dirs(source_dir, ["Image", "Mask"], LAYOUT)
    return pair_by_case(SITE, _case_dirs(source_dir / "Image"), _case_dirs(source_dir / "Mask"))


def find_seg(folder: Path) -> Path:
    """The one DICOM-SEG file below `folder`."""
    found = []
    for path in visible(p for p in folder.rglob("*") if p.is_file()):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"])
        except (InvalidDicomError, OSError):
            continue
        if header.get("Modality") == "SEG":
            found.append(path)
    if len(found) != 1:
        raise CaseError(f"expected one DICOM-SEG file below {folder}, found {len(found)}")
    return found[0]


def merge_zones(zones: list[np.ndarray], urethra: list[np.ndarray]) -> np.ndarray:
    """0/1 uint8 union of (z, y, x) zone masks, plus urethra voxels on the z slices that hold a zone."""
    gland = np.any(zones, axis=0)
    on_gland_slices = gland.any(axis=(1, 2))[:, None, None]
    if urethra:
        gland |= np.any(urethra, axis=0) & on_gland_slices
    return gland.astype(np.uint8)


def read_seg(path: Path) -> tuple[hd.seg.Segmentation, hd.Volume, str]:
    """The DICOM-SEG, its segments as one volume (a channel per segment) and its referenced series UID."""
    try:
        seg = hd.seg.segread(path)
        volume = seg.get_volume()
        series_uid = seg.ReferencedSeriesSequence[0].SeriesInstanceUID
    except Exception as err:  # pydicom and highdicom raise many unrelated types for a bad file
        raise CaseError(f"cannot read DICOM-SEG {path}: {type(err).__name__}: {err}") from err
    return seg, volume, series_uid


def load_pair(case: CaseSource) -> tuple[sitk.Image, sitk.Image]:
    """The referenced T2 series as float32 and the merged SEG segments as 0/1 on its grid."""
    seg_path = find_seg(case.mask)
    seg, volume, series_uid = read_seg(seg_path)
    image = as_image(read_dicom_series(case.image, series_uid))
    zones, urethra = [], []
    for number in seg.segment_numbers:
        segment = volume.get_channel(ReferencedSegmentNumber=number).to_simpleitk()
        on_image = sitk.GetArrayFromImage(resample_onto(sitk.Cast(segment > 0, sitk.sitkUInt8), image, seg_path))
        label = seg.get_segment_description(number).SegmentLabel
        (urethra if URETHRA in label.lower() else zones).append(on_image)
    if not zones:
        raise CaseError(f"{seg_path}: no segment other than the urethra")
    mask = sitk.GetImageFromArray(merge_zones(zones, urethra))
    mask.CopyInformation(image)
    return image, mask


CONVERTER = Converter(SOURCE, (SITE,), discover, load_pair)
