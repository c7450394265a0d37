"""The one entry point over tiny raw downloads of all five sources: 3D, 2D, datalists, summary, re-run."""

import json
import shutil

from raw_builders import (
    Grid,
    box_mask,
    build_i2cvb,
    build_msd,
    build_nci_isbi_image,
    build_promise12,
    build_prostatex,
    prostatex_dirs,
    snapshot,
    write_nrrd,
)

from data_preparation.prepare import main

GRID = Grid()
SITES = ["I2CVB", "MSD", "NCI_ISBI_3T", "NCI_ISBI_Dx", "Promise12", "PROSTATEx"]


def build_raw(raw, cases_per_site: int = 4) -> None:
    """Every source with `cases_per_site` cases per site (I2CVB also holds its known defective case)."""
    numbers = range(cases_per_site)
    build_i2cvb(raw, {f"Patient {n}": ("GE" if n % 2 else "Siemens", GRID) for n in [*numbers, 428260]})
    build_msd(raw, [f"prostate_{n:02d}" for n in numbers], GRID)
    for prefix in ("Prostate3T", "ProstateDx"):
        for n in numbers:
            case = f"{prefix}-01-{n:04d}"
            build_nci_isbi_image(raw, case, GRID, n)
            write_nrrd(raw / "NCI_ISBI" / "Mask" / "Training" / f"{case}.nrrd", box_mask(GRID, 2), GRID)
    build_promise12(raw, [f"Case{n:02d}" for n in numbers], GRID)
    for n in numbers:
        build_prostatex(raw, f"ProstateX-{n:04d}", GRID, {"Peripheral zone": box_mask(GRID)})


def test_whole_chain_then_a_rerun_that_changes_nothing(tmp_path, capsys):
    raw, out = tmp_path / "Raw", tmp_path / "out"
    build_raw(raw)

    assert main(["--raw", str(raw), "--output", str(out)]) == 0

    printed = capsys.readouterr().out
    for site in SITES:
        assert len(list((out / "dataset" / site / "Image").glob("*.nii.gz"))) == 4
        assert len(list((out / "dataset" / site / "Mask").glob("*.nii.gz"))) == 4
        assert len(list((out / "dataset_2D" / site).glob("*/Image/*.png"))) == 4 * 2  # 2 prostate slices a case
        datalist = json.loads((out / "datalist_2D" / f"client_{site}.json").read_text())
        assert [len(datalist[split]) for split in ("training", "validation", "testing")] == [4, 2, 2]
        assert site in printed
    assert (out / "datalist_2D" / "client_All.json").exists()
    assert "I2CVB: Patient_428260" in printed and "no failures" in printed
    data_before = snapshot(out / "dataset") | snapshot(out / "dataset_2D")
    lists_before = {name: stamp[1] for name, stamp in snapshot(out / "datalist_2D").items()}

    assert main(["--raw", str(raw), "--output", str(out)]) == 0

    assert snapshot(out / "dataset") | snapshot(out / "dataset_2D") == data_before
    assert {name: stamp[1] for name, stamp in snapshot(out / "datalist_2D").items()} == lists_before


def test_named_sites_only_and_failures_listed_at_the_end(tmp_path, capsys):
    raw, out = tmp_path / "Raw", tmp_path / "out"
    build_promise12(raw, [f"Case{n:02d}" for n in range(5)], GRID)
    build_msd(raw, ["prostate_00"], GRID)
    corrupt = raw / "Promise12" / "TrainingData_Part1" / "Case03_segmentation.raw"
    corrupt.write_bytes(b"\x00")

    assert main(["--raw", str(raw), "--output", str(out), "--sites", "Promise12"]) == 1

    printed = capsys.readouterr().out
    assert sorted(p.name for p in (out / "dataset").iterdir()) == ["Promise12"]
    assert len(list((out / "dataset" / "Promise12" / "Image").iterdir())) == 4
    assert "Promise12: Case03:" in printed and "Case03_segmentation" in printed
    assert json.loads((out / "datalist_2D" / "client_Promise12.json").read_text())["training"]


def test_three_cases_need_the_largest_remainder_split_rule(tmp_path, capsys):
    raw, out = tmp_path / "Raw", tmp_path / "out"
    build_promise12(raw, [f"Case{n:02d}" for n in range(3)], GRID)
    args = ["--raw", str(raw), "--output", str(out)]

    assert main(args) == 1
    assert "leaves testing without a case; add cases or use the largest-remainder split rule" in capsys.readouterr().out
    assert not (out / "datalist_2D" / "client_Promise12.json").exists()

    assert main([*args, "--split-rule", "largest-remainder"]) == 0
    datalist = json.loads((out / "datalist_2D" / "client_Promise12.json").read_text())
    assert [len(datalist[split]) for split in ("training", "validation", "testing")] == [2, 2, 2]


def test_a_wrong_layout_stops_before_writing_anything(tmp_path, capsys):
    raw, out = tmp_path / "Raw", tmp_path / "out"
    build_promise12(raw, ["Case00"], GRID)
    (raw / "MSD").mkdir()
    (raw / "PROSTATEx" / "Image").mkdir(parents=True)

    assert main(["--raw", str(raw), "--output", str(out)]) == 2

    error = capsys.readouterr().err
    assert str(raw / "MSD") in error and str(raw / "PROSTATEx") in error
    assert not out.exists()


def test_a_named_site_without_its_raw_folder_stops(tmp_path, capsys):
    (tmp_path / "Raw").mkdir()
    assert main(["--raw", str(tmp_path / "Raw"), "--output", str(tmp_path / "out"), "--sites", "MSD"]) == 2
    assert "MSD: no such folder" in capsys.readouterr().err


def test_prostatex_patients_without_segmentation_are_listed_and_the_run_succeeds(tmp_path, capsys):
    raw, out = tmp_path / "Raw", tmp_path / "out"
    for n in range(6):
        build_prostatex(raw, f"ProstateX-{n:04d}", GRID, {"Peripheral zone": box_mask(GRID)})
    for n in (1, 3):
        shutil.rmtree(prostatex_dirs(raw, f"ProstateX-{n:04d}")[1].parent)

    assert main(["--raw", str(raw), "--output", str(out)]) == 0

    printed = capsys.readouterr().out
    assert "skipped: no segmentation (2):\n  PROSTATEx: ProstateX-0001, ProstateX-0003" in printed
    assert "no failures" in printed
    assert sorted(p.name for p in (out / "dataset" / "PROSTATEx" / "Mask").iterdir()) == [
        "ProstateX-0000.nii.gz",
        "ProstateX-0002.nii.gz",
        "ProstateX-0004.nii.gz",
        "ProstateX-0005.nii.gz",
    ]


def test_nrrd_geometry_option_resolves_a_disagreeing_header(tmp_path, capsys):
    raw, out = tmp_path / "Raw", tmp_path / "out"
    for n in range(4):
        case = f"Prostate3T-01-{n:04d}"
        build_nci_isbi_image(raw, case, GRID, n)
        header = Grid(origin=(-3.0, -5.0, 10.0)) if n == 2 else GRID
        write_nrrd(raw / "NCI_ISBI" / "Mask" / "Training" / f"{case}.nrrd", box_mask(GRID), header)
    args = ["--raw", str(raw), "--output", str(out), "--sites", "NCI_ISBI_3T"]

    assert main(args) == 1
    assert "NCI_ISBI: Prostate3T-01-0002: mask " in capsys.readouterr().out

    assert main([*args, "--nrrd-geometry", "image"]) == 0
    assert "no failures" in capsys.readouterr().out
    assert json.loads((out / "datalist_2D" / "client_NCI_ISBI_3T.json").read_text())["testing"]
