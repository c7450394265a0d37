"""PROSTATEx: the SEG's series plus DICOM-SEG zones merged onto its grid, choices among SEGs, bad files."""

import logging
import shutil

import numpy as np
import pydicom
import pytest
from pydicom.sr.coding import Code
from raw_builders import (
    FLIPPED_XY,
    Grid,
    assert_converted,
    box_mask,
    build_prostatex,
    phantom,
    prostatex_dirs,
    write_dicom_seg,
)

from data_preparation.converters import prostatex
from data_preparation.converters.common import LayoutError
from data_preparation.converters.runner import convert_source, discover_source

GRID = Grid(direction=FLIPPED_XY)
AXIAL, SAGITTAL = "4.000000-t2tsetra-00702", "3.000000-t2tsesag-87368"
URETHRA_CODE = Code("13648007", "SCT", "Urethra")


def zones(urethra_label: str = "Distal prostatic urethra") -> dict[str, np.ndarray]:
    """Two zones on slices 1-2 and a urethra reaching slice 3, where no zone is."""
    urethra = np.zeros(GRID.shape, np.uint8)
    urethra[1:4, 7:9, 7:9] = 1
    return {"PZ": box_mask(GRID, y=slice(8, 12)), "TZ": box_mask(GRID, y=slice(4, 7)), urethra_label: urethra}


def zones_mask() -> np.ndarray:
    """The merged mask of `zones()`: the zones, and the urethra only on the slices where they are."""
    expected = box_mask(GRID, y=slice(8, 12)) | box_mask(GRID, y=slice(4, 7))
    expected[1:3, 7:9, 7:9] = 1
    return expected


def convert(raw, dataset):
    return convert_source(prostatex.CONVERTER, discover_source(prostatex.CONVERTER, raw), dataset)


def series_datasets(raw, case, series):
    """The datasets of one written image series of `case`, for writing another SEG over it."""
    return [pydicom.dcmread(path) for path in sorted((prostatex_dirs(raw, case)[0] / series).iterdir())]


def test_segments_merge_onto_the_referenced_series_and_their_names_are_logged(tmp_path, caplog):
    raw, dataset = tmp_path / "Raw", tmp_path / "dataset"
    build_prostatex(raw, "ProstateX-0000", GRID, zones(), {"PZ": "Peripheral zone of prostate"})

    with caplog.at_level(logging.INFO, logger=prostatex.__name__):
        report = convert(raw, dataset)

    assert [c.case for c in report.converted] == ["ProstateX-0000"] and not report.failed
    assert_converted(dataset, "PROSTATEx", "ProstateX-0000", GRID, phantom(GRID, 1), zones_mask())
    (logged,) = [r.getMessage() for r in caplog.records if "segments of" in r.getMessage()]
    assert logged.startswith("ProstateX-0000: ")
    assert "1: PZ / Peripheral zone of prostate / Prostate (GLAND)" in logged
    assert "3: Distal prostatic urethra / Prostate (ON_GLAND_SLICES)" in logged


@pytest.mark.parametrize(
    ("label", "description", "property_type"),
    [
        ("DPU", "Distal prostatic urethra", None),  # named by SegmentDescription, as in the PROSTATEx SEGs
        ("Segment 3", None, URETHRA_CODE),  # named by the segmented property type only
    ],
)
def test_the_urethra_is_found_by_description_or_property_type(tmp_path, label, description, property_type):
    raw, dataset = tmp_path / "Raw", tmp_path / "dataset"
    seg = build_prostatex(raw, "ProstateX-0000", GRID, {"PZ": box_mask(GRID)})
    segments = zones(label)
    write_dicom_seg(
        seg,
        series_datasets(raw, "ProstateX-0000", AXIAL),
        segments,
        {label: description} if description else None,
        {label: property_type} if property_type else None,
    )

    report = convert(raw, dataset)

    assert not report.failed
    assert_converted(dataset, "PROSTATEx", "ProstateX-0000", GRID, phantom(GRID, 1), zones_mask())


EXPECTED_ROLES = {
    ("DPU", "Distal prostatic urethra"): prostatex.Role.ON_GLAND_SLICES,
    ("3", "Urethra"): prostatex.Role.ON_GLAND_SLICES,
    ("AFS", "Anterior fibromuscular stroma of prostate"): prostatex.Role.GLAND,
    ("PZ", "Peripheral zone of prostate", "Prostate"): prostatex.Role.GLAND,
}


def test_the_merge_rules_table_decides_each_segment_role():
    assert {names: prostatex.merge_rule(names).role for names in EXPECTED_ROLES} == EXPECTED_ROLES


def test_merge_segments_keeps_on_gland_slices_segments_only_where_the_gland_is():
    zone = np.zeros((3, 2, 2), bool)
    zone[0, 0, 0] = True
    urethra = np.zeros((3, 2, 2), bool)
    urethra[:, 1, 1] = True
    merged = prostatex.merge_segments([zone], [urethra])
    assert merged.dtype == np.uint8
    assert merged.sum(axis=(1, 2)).tolist() == [2, 0, 0]


def test_a_seg_without_referenced_series_uses_the_series_of_its_source_images(tmp_path, caplog):
    raw, dataset = tmp_path / "Raw", tmp_path / "dataset"
    seg = build_prostatex(raw, "ProstateX-0000", GRID, zones())
    unreferenced = pydicom.dcmread(seg)
    del unreferenced.ReferencedSeriesSequence
    unreferenced.save_as(seg)

    report = convert(raw, dataset)

    assert not report.failed
    assert_converted(dataset, "PROSTATEx", "ProstateX-0000", GRID, phantom(GRID, 1), zones_mask())
    assert any(str(seg) in r.getMessage() and "no ReferencedSeriesSequence" in r.getMessage() for r in caplog.records)


def test_a_seg_whose_series_is_missing_fails_naming_it_and_the_series_present(tmp_path):
    raw, dataset = tmp_path / "Raw", tmp_path / "dataset"
    seg = build_prostatex(raw, "ProstateX-0001", GRID, zones())
    shutil.rmtree(prostatex_dirs(raw, "ProstateX-0001")[0] / AXIAL)

    report = convert(raw, dataset)

    failure = report.failed["ProstateX-0001"]
    assert str(seg) in failure and "no DICOM-SEG drawn on" in failure
    assert '"t2_tse_sag"' in failure and str(prostatex_dirs(raw, "ProstateX-0001")[0] / SAGITTAL) in failure


def test_of_several_segs_the_one_on_a_present_series_with_most_segments_is_used(tmp_path):
    raw, dataset = tmp_path / "Raw", tmp_path / "dataset"
    whole_gland = box_mask(GRID, y=slice(2, 14), x=slice(2, 14))
    # Case 0: a whole-gland SEG on the sagittal series (present) and the zones SEG on the axial series.
    # Case 1: the same, but the sagittal series is not in the download and the whole-gland SEG has more segments.
    for case, extra in (("ProstateX-0000", {}), ("ProstateX-0001", {"a": whole_gland, "b": whole_gland})):
        build_prostatex(raw, case, GRID, zones())
        mask_study = prostatex_dirs(raw, case)[1]
        write_dicom_seg(
            mask_study / "301.000000-Segmentation-2" / "1-1.dcm",
            series_datasets(raw, case, SAGITTAL),
            {"Prostate": whole_gland, **extra},
        )
    shutil.rmtree(prostatex_dirs(raw, "ProstateX-0001")[0] / SAGITTAL)

    report = convert(raw, dataset)

    assert [c.case for c in report.converted] == ["ProstateX-0000", "ProstateX-0001"] and not report.failed
    for case in ("ProstateX-0000", "ProstateX-0001"):
        assert_converted(dataset, "PROSTATEx", case, GRID, phantom(GRID, 1), zones_mask())


def test_patients_without_a_seg_are_unlabelled_not_failed(tmp_path):
    raw, dataset = tmp_path / "Raw", tmp_path / "dataset"
    build_prostatex(raw, "ProstateX-0000", GRID, zones())
    for case in ("ProstateX-0001", "ProstateX-0002"):
        build_prostatex(raw, case, GRID, zones())
        shutil.rmtree(raw / "PROSTATEx" / "Mask" / "manifest-2" / "PROSTATEx" / case)

    report = convert(raw, dataset)

    assert [c.case for c in report.converted] == ["ProstateX-0000"]
    assert report.unlabelled == ["ProstateX-0001", "ProstateX-0002"] and not report.failed


@pytest.mark.parametrize("fraction", [0.01, 0.05, 0.15, 0.3, 0.5, 0.7, 0.9, 0.99])
def test_a_truncated_seg_fails_naming_the_file(tmp_path, fraction):
    raw, dataset = tmp_path / "Raw", tmp_path / "dataset"
    seg = build_prostatex(raw, "ProstateX-0000", GRID, zones())
    data = seg.read_bytes()
    seg.write_bytes(data[: int(len(data) * fraction)])

    report = convert(raw, dataset)

    assert not report.converted
    assert str(seg) in report.failed["ProstateX-0000"]


def test_a_seg_highdicom_cannot_make_a_volume_of_fails_naming_the_file(tmp_path):
    raw, dataset = tmp_path / "Raw", tmp_path / "dataset"
    seg = build_prostatex(raw, "ProstateX-0000", GRID, zones())
    irregular = pydicom.dcmread(seg)
    irregular.PerFrameFunctionalGroupsSequence[1].PlanePositionSequence[0].ImagePositionPatient = [4.0, 5.0, 50.7]
    irregular.save_as(seg)

    report = convert(raw, dataset)

    assert report.failed["ProstateX-0000"].startswith(f"cannot use DICOM-SEG {seg}: RuntimeError")


def test_a_seg_with_only_a_urethra_segment_fails_listing_its_segments(tmp_path):
    raw, dataset = tmp_path / "Raw", tmp_path / "dataset"
    seg = build_prostatex(raw, "ProstateX-0000", GRID, {"Distal prostatic urethra": box_mask(GRID)})

    report = convert(raw, dataset)

    assert report.failed["ProstateX-0000"] == (
        f"{seg}: no GLAND segment, only 1: Distal prostatic urethra / Prostate (ON_GLAND_SLICES)"
    )


def test_a_raw_folder_without_image_folder_stops_before_writing(tmp_path):
    (tmp_path / "Raw" / "PROSTATEx" / "Mask").mkdir(parents=True)
    with pytest.raises(LayoutError, match="Image"):
        discover_source(prostatex.CONVERTER, tmp_path / "Raw")


def test_manifests_fetched_into_the_source_folder_stop_naming_what_was_found(tmp_path):
    raw = tmp_path / "Raw"
    build_prostatex(raw, "ProstateX-0000", GRID, zones())
    (raw / "PROSTATEx" / "Image").rename(raw / "PROSTATEx" / "manifest-1")
    (raw / "PROSTATEx" / "Mask").rename(raw / "PROSTATEx" / "manifest-2")

    with pytest.raises(LayoutError) as error:
        discover_source(prostatex.CONVERTER, raw)

    message = str(error.value)
    assert message.startswith(f"{raw / 'PROSTATEx'}: missing folder(s) Image, Mask; found 9 .dcm file(s) (1-01.dcm")


@pytest.mark.parametrize("leftover", [None, "PROSTATEx-Seg-Zones.tcia"])
def test_an_empty_mask_folder_stops_before_any_case(tmp_path, leftover):
    raw = tmp_path / "Raw"
    build_prostatex(raw, "ProstateX-0000", GRID, zones())
    mask_dir = raw / "PROSTATEx" / "Mask"
    shutil.rmtree(mask_dir)
    mask_dir.mkdir()
    if leftover:
        (mask_dir / leftover).write_text("downloadServerUrl=https://example.invalid\n")

    with pytest.raises(LayoutError) as error:
        discover_source(prostatex.CONVERTER, raw)

    message = str(error.value)
    assert message.startswith(f"{mask_dir}: no ProstateX-XXXX case folder of the mask manifest; found ")
    if leftover:
        assert f"1 .tcia file(s) ({leftover})" in message and "NBIA Data Retriever" in message
    else:
        assert "found no files" in message
