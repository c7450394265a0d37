"""PROSTATEx: DICOM T2 images plus DICOM-SEG zone masks, segments merged onto the image grid.

A full-collection download holds about 346 patients, of whom about 98 have a segmentation; the
others are listed as skipped (no segmentation), not as failures.

Which SEG of a patient and which image series (`choose_seg`): a SEG names the series it was drawn
on in its ReferencedSeriesSequence or, lacking it, through the SOP instances of its source images.
Of the patient's SEGs, those drawn on exactly one series of the patient's image folder are kept; of
these the one with the most segments is used (a zones SEG over a whole-gland SEG: its zones are the
reference's masks, and their union is the gland); a tie goes to the first file by path.

Which segments form the prostate mask: `MERGE_RULES`, matched against each segment's label,
description and segmented property type.
"""

import logging
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from data_preparation.converters.common import (
    CaseError,
    CaseSource,
    Converter,
    Discovery,
    examples,
    layout_error,
    pair_by_case,
    require_dirs,
    visible,
)
from data_preparation.converters.volumes import (
    as_image,
    describe_series,
    dicom_series,
    read_series_files,
    resample_onto,
)

logger = logging.getLogger(__name__)

SOURCE = "PROSTATEx"
SITE = "PROSTATEx"
CASE_NAME = re.compile(r"^ProstateX-\d+$")
LAYOUT = """Raw/PROSTATEx/Image/<any folders>/ProstateX-XXXX/<study>/<series>/*.dcm   (image manifest: the T2 series)
Raw/PROSTATEx/Mask/<any folders>/ProstateX-XXXX/<study>/<series>/*.dcm    (segmentation manifest: DICOM-SEG)"""


class Role(Enum):
    """What a segment contributes to the prostate mask."""

    GLAND = "part of the prostate"
    ON_GLAND_SLICES = "part of the prostate only on slices where a GLAND segment is present"


@dataclass(frozen=True)
class MergeRule:
    """Segments with `keyword` in their label, description or property type have `role`."""

    keyword: str
    role: Role
    why: str


# The first rule whose keyword occurs (case-insensitively) in one of a segment's names decides its role.
MERGE_RULES = (
    MergeRule(
        "urethra",
        Role.ON_GLAND_SLICES,
        "the distal prostatic urethra runs on below the apex; other prostate protocols leave it out of the gland",
    ),
    MergeRule(
        "",
        Role.GLAND,
        "every other segment: peripheral, transition and central zones, anterior fibromuscular stroma, whole gland",
    ),
)


@dataclass(frozen=True)
class SegHeader:
    """What choosing among a patient's SEG files needs, read without pixel data."""

    path: Path
    referenced_series: frozenset[str]  # from ReferencedSeriesSequence; empty if the SEG has none
    source_instances: frozenset[str]  # SOP Instance UIDs of the source images of its frames
    segments: int


def _case_dirs(root: Path) -> list[tuple[str, Path]]:
    """(case, folder) of the folders named like a PROSTATEx case below `root`."""
    return [(p.name, p) for p in visible(root.rglob("ProstateX-*")) if p.is_dir() and CASE_NAME.match(p.name)]


def discover(source_dir: Path) -> Discovery:
    """Pair image and mask case folders by case name; image cases without a mask folder are unlabelled.

    `LayoutError` if Image/ or Mask/ holds no case folder (e.g. a manifest downloaded into the wrong folder).
    """
    require_dirs(source_dir, ["Image", "Mask"], LAYOUT)
    images, masks = _case_dirs(source_dir / "Image"), _case_dirs(source_dir / "Mask")
    for folder, cases, manifest in ((source_dir / "Image", images, "image"), (source_dir / "Mask", masks, "mask")):
        if not cases:
            raise layout_error(folder, f"no ProstateX-XXXX case folder of the {manifest} manifest", LAYOUT)
    segmented = {case for case, _ in masks}
    found = pair_by_case(SITE, [(case, path) for case, path in images if case in segmented], masks)
    found.unlabelled = sorted({case for case, _ in images if case not in segmented})
    return found


def _source_instances(seg: Dataset) -> frozenset[str]:
    """SOP Instance UIDs in the SourceImageSequence of every frame (shared and per-frame groups)."""
    groups = [*seg.get("SharedFunctionalGroupsSequence", []), *seg.get("PerFrameFunctionalGroupsSequence", [])]
    return frozenset(
        source.ReferencedSOPInstanceUID
        for group in groups
        for derivation in group.get("DerivationImageSequence", [])
        for source in derivation.get("SourceImageSequence", [])
    )


def read_seg_header(path: Path) -> SegHeader | None:
    """The SEG header of `path`; None if it is no DICOM file or no SEG. A damaged file is a `CaseError`."""
    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
        if dataset.get("Modality") != "SEG":
            return None
        return SegHeader(
            path,
            frozenset(item.SeriesInstanceUID for item in dataset.get("ReferencedSeriesSequence", [])),
            _source_instances(dataset),
            len(dataset.SegmentSequence),
        )
    except InvalidDicomError:
        return None
    except Exception as err:  # a truncated file fails in struct, OSError, pydicom's own types, ...
        raise CaseError(f"cannot read DICOM file {path}: {type(err).__name__}: {err}") from err


def find_segs(folder: Path) -> list[SegHeader]:
    """The DICOM-SEG files below `folder`; `CaseError` naming the files found if there is none."""
    files = visible(p for p in folder.rglob("*") if p.is_file())
    segs = [header for path in files if (header := read_seg_header(path))]
    if not segs:
        names = examples([str(path) for path in files])
        raise CaseError(f"no DICOM-SEG file below {folder}; found {len(files)} other file(s): {names}")
    return segs


def instance_series(series: dict[str, list[str]]) -> dict[str, str]:
    """SOP Instance UID -> series UID of every file of `series` (as `dicom_series` lists them)."""
    return {
        pydicom.dcmread(file, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID: uid
        for uid, files in series.items()
        for file in files
    }


def drawn_on(seg: SegHeader, series: dict[str, list[str]]) -> set[str]:
    """The series of `series` that `seg` was drawn on: those it references or, lacking the reference,
    those holding its source images (logged, naming the file)."""
    if seg.referenced_series:
        return seg.referenced_series & series.keys()
    of_instance = instance_series(series)
    found = {of_instance[uid] for uid in seg.source_instances if uid in of_instance}
    logger.warning(
        "%s has no ReferencedSeriesSequence; its source images are in series %s", seg.path, sorted(found) or "none"
    )
    return found


def choose_seg(segs: list[SegHeader], series: dict[str, list[str]], image_dir: Path) -> tuple[SegHeader, str]:
    """The SEG to use and the UID of the series it was drawn on, by the rule in the module docstring."""
    usable = []
    for seg in segs:
        on = drawn_on(seg, series)
        if len(on) == 1:
            usable.append((seg, on.pop()))
    if not usable:
        references = "; ".join(
            f"{seg.path} references {sorted(seg.referenced_series) or 'no series'}"
            f" and {len(seg.source_instances)} source images"
            for seg in segs
        )
        raise CaseError(
            f"no DICOM-SEG drawn on exactly one series of {image_dir}: {references}; "
            f"series there: {describe_series(series) or 'none'}"
        )
    usable.sort(key=lambda pair: (-pair[0].segments, str(pair[0].path)))
    chosen = usable[0]
    if len(segs) > 1:
        logger.info("%s: %d DICOM-SEG files, using %s", image_dir, len(segs), chosen[0].path)
    return chosen


def segment_names(description: Dataset) -> tuple[str, ...]:
    """A segment's label, description and segmented property type (code meaning): those present, once each."""
    names = [description.get("SegmentLabel", ""), description.get("SegmentDescription", "")]
    names += [code.CodeMeaning for code in description.get("SegmentedPropertyTypeCodeSequence", [])]
    return tuple(dict.fromkeys(name for name in names if name))


def merge_rule(names: tuple[str, ...]) -> MergeRule:
    """The first of `MERGE_RULES` whose keyword occurs in one of `names` (the last rule matches any)."""
    return next(rule for rule in MERGE_RULES if not rule.keyword or any(rule.keyword in n.lower() for n in names))


def merge_segments(gland: list[np.ndarray], on_gland_slices: list[np.ndarray]) -> np.ndarray:
    """0/1 uint8 union of (z, y, x) GLAND masks, plus ON_GLAND_SLICES voxels on the z slices that hold gland."""
    merged = np.any(gland, axis=0)
    if on_gland_slices:
        merged |= np.any(on_gland_slices, axis=0) & merged.any(axis=(1, 2))[:, None, None]
    return merged.astype(np.uint8)


def seg_mask(seg_path: Path, image: sitk.Image, case: str) -> sitk.Image:
    """The segments of the SEG at `seg_path` resampled onto `image` and merged by `MERGE_RULES`."""
    seg = hd.seg.segread(seg_path)
    volume = seg.get_volume()
    by_role: dict[Role, list[np.ndarray]] = {role: [] for role in Role}
    described = []
    for number in seg.segment_numbers:
        names = segment_names(seg.get_segment_description(number))
        role = merge_rule(names).role
        segment = sitk.Cast(volume.get_channel(ReferencedSegmentNumber=number).to_simpleitk() > 0, sitk.sitkUInt8)
        by_role[role].append(sitk.GetArrayFromImage(resample_onto(segment, image, seg_path)))
        described.append(f"{number}: {' / '.join(names)} ({role.name})")
    logger.info("%s: segments of %s: %s", case, seg_path, "; ".join(described))
    if not by_role[Role.GLAND]:
        raise CaseError(f"{seg_path}: no {Role.GLAND.name} segment, only {'; '.join(described)}")
    mask = sitk.GetImageFromArray(merge_segments(by_role[Role.GLAND], by_role[Role.ON_GLAND_SLICES]))
    mask.CopyInformation(image)
    return mask


def load_pair(case: CaseSource) -> tuple[sitk.Image, sitk.Image]:
    """The series the chosen SEG was drawn on, as float32, and the merged segments as 0/1 on its grid."""
    series = dicom_series(case.image)
    seg, series_uid = choose_seg(find_segs(case.mask), series, case.image)
    image = as_image(read_series_files(series[series_uid]))
    try:
        return image, seg_mask(seg.path, image, case.case)
    except CaseError:
        raise
    except Exception as err:  # highdicom, pydicom and SimpleITK raise many unrelated types for a bad SEG
        raise CaseError(f"cannot use DICOM-SEG {seg.path}: {type(err).__name__}: {err}") from err


CONVERTER = Converter(SOURCE, (SITE,), discover, load_pair)
