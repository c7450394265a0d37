import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_preparation import datalist as datalist_cli
from data_preparation.datalist import (
    LARGEST_REMAINDER_RULE,
    SPLITS,
    reference_split_sizes,
    site_datalist,
    split_cases,
    write_datalists,
)

# The reference's assignment, pinned. Obtained once, outside this repository: NVIDIA/NVFlare's
# research/prostate/data_preparation/utils/prepare_data_split.py (commit f3b7c1b), unchanged, was run with
# --mode folder on throwaway <site>/Image/<case>/ and <site>/Mask/<case>/ folders holding these case names,
# and each part's cases were read from its JSON in the order written there.
PATIENTS_19 = [f"Patient_{n}" for n in range(1, 20)]  # sorted as strings, not as numbers: Patient_10 < Patient_2
REFERENCE_19 = {
    "training": [
        "Patient_19", "Patient_10", "Patient_17", "Patient_9", "Patient_5",
        "Patient_7", "Patient_15", "Patient_13", "Patient_11", "Patient_14",
    ],
    "validation": ["Patient_4", "Patient_18", "Patient_16", "Patient_8", "Patient_2"],
    "testing": ["Patient_12", "Patient_1", "Patient_6", "Patient_3"],
}
DX_12 = [f"ProstateDx-01-{n:04d}" for n in range(1, 13)]
REFERENCE_12 = {
    "training": [
        "ProstateDx-01-0007", "ProstateDx-01-0012", "ProstateDx-01-0005",
        "ProstateDx-01-0011", "ProstateDx-01-0003", "ProstateDx-01-0009",
    ],
    "validation": ["ProstateDx-01-0002", "ProstateDx-01-0008", "ProstateDx-01-0010"],
    "testing": ["ProstateDx-01-0004", "ProstateDx-01-0001", "ProstateDx-01-0006"],
}
# This repository's own split of the same 19 names, as split_cases gave it before the reference's became
# the default (commit 5c82e14).
LARGEST_REMAINDER_19 = {
    "training": [
        "Patient_1", "Patient_11", "Patient_12", "Patient_13", "Patient_16",
        "Patient_19", "Patient_3", "Patient_5", "Patient_9",
    ],
    "validation": ["Patient_14", "Patient_17", "Patient_2", "Patient_7", "Patient_8"],
    "testing": ["Patient_10", "Patient_15", "Patient_18", "Patient_4", "Patient_6"],
}


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 4), value, dtype=np.uint8)).save(path)


def _make_site(root: Path, site: str, n_cases: int, slices=("003", "004")) -> None:
    for k in range(n_cases):
        for name in slices:
            _png(root / site / f"{site}_c{k}" / "Image" / f"{name}.png", 100)
            _png(root / site / f"{site}_c{k}" / "Mask" / f"{name}.png", 255)


@pytest.mark.parametrize("cases, expected", [(PATIENTS_19, REFERENCE_19), (DX_12, REFERENCE_12)])
def test_default_split_is_the_references_case_for_case(cases, expected):
    shuffled = cases[:]
    random.Random(2).shuffle(shuffled)
    assert split_cases(shuffled) == expected
    assert split_cases(cases, (0.5, 0.25, 0.25), 0, "reference") == expected


def test_reference_split_leaves_numpys_global_generator_alone():
    np.random.seed(7)
    before = np.random.get_state()[1].copy()
    split_cases(PATIENTS_19)
    np.testing.assert_array_equal(np.random.get_state()[1], before)


def test_the_largest_remainder_split_stays_available():
    assert split_cases(PATIENTS_19, rule=LARGEST_REMAINDER_RULE) == LARGEST_REMAINDER_19


def test_split_cases_rejects_an_unknown_rule():
    with pytest.raises(ValueError, match="unknown split rule 'balanced'"):
        split_cases(PATIENTS_19, rule="balanced")


@pytest.mark.parametrize("rule", ["reference", LARGEST_REMAINDER_RULE])
def test_split_cases_is_deterministic_by_case_and_order_independent(rule):
    cases = [f"case{k:02d}" for k in range(8)]
    split = split_cases(cases, seed=3, rule=rule)
    assert {name: len(split[name]) for name in SPLITS} == {"training": 4, "validation": 2, "testing": 2}
    assigned = [case for name in SPLITS for case in split[name]]
    assert sorted(assigned) == cases  # every case exactly once
    shuffled = cases[:]
    random.Random(1).shuffle(shuffled)
    assert split_cases(shuffled, seed=3, rule=rule) == split
    assert split_cases(cases, seed=3, rule=rule) == split


@pytest.mark.parametrize("rule", ["reference", LARGEST_REMAINDER_RULE])
def test_split_cases_seed_changes_the_assignment(rule):
    cases = [f"case{k:02d}" for k in range(20)]
    assert split_cases(cases, seed=0, rule=rule) != split_cases(cases, seed=1, rule=rule)


# Sizes the reference printed for these case counts (run as above); its cuts use Python's round(), which
# rounds half to even: 3.5 -> 4, 6.5 -> 6, 9.5 -> 10, 10.5 -> 10.
@pytest.mark.parametrize(
    "n_cases, ratios, sizes",
    [
        (4, (0.5, 0.25, 0.25), (2, 1, 1)),
        (5, (0.5, 0.25, 0.25), (2, 1, 2)),
        (6, (0.5, 0.25, 0.25), (3, 2, 1)),
        (7, (0.5, 0.25, 0.25), (4, 2, 1)),
        (10, (0.5, 0.25, 0.25), (5, 2, 3)),
        (13, (0.5, 0.25, 0.25), (6, 3, 4)),
        (19, (0.5, 0.25, 0.25), (10, 5, 4)),
        (21, (0.5, 0.25, 0.25), (10, 5, 6)),
        (10, (0.6, 0.2, 0.2), (6, 2, 2)),
    ],
)
def test_reference_split_sizes(n_cases, ratios, sizes):
    assert reference_split_sizes(n_cases, ratios) == sizes
    split = split_cases([f"c{k}" for k in range(n_cases)], ratios=ratios, seed=0)
    assert tuple(len(split[name]) for name in SPLITS) == sizes


def test_reference_split_refuses_to_leave_a_split_without_a_case():
    with pytest.raises(ValueError, match=r"3 cases .* leaves testing without a case"):
        split_cases(["a", "b", "c"])
    with pytest.raises(ValueError, match=r"2 cases .* leaves validation without a case"):
        split_cases(["a", "b"])


@pytest.mark.parametrize(
    "n_cases, ratios, sizes",
    [
        (3, (0.5, 0.25, 0.25), (1, 1, 1)),
        (4, (0.5, 0.25, 0.25), (2, 1, 1)),
        (6, (0.5, 0.25, 0.25), (3, 2, 1)),
        (7, (0.5, 0.25, 0.25), (3, 2, 2)),
        (10, (0.6, 0.2, 0.2), (6, 2, 2)),
        (3, (0.05, 0.05, 0.9), (1, 1, 1)),
        (12, (0.5, 0.25, 0.25), (6, 3, 3)),
    ],
)
def test_largest_remainder_respects_ratios_and_gives_every_split_a_case(n_cases, ratios, sizes):
    split = split_cases([f"c{k}" for k in range(n_cases)], ratios=ratios, seed=0, rule=LARGEST_REMAINDER_RULE)
    assert tuple(len(split[name]) for name in SPLITS) == sizes


@pytest.mark.parametrize("rule", ["reference", LARGEST_REMAINDER_RULE])
def test_split_cases_rejects_too_few_cases_and_bad_ratios(rule):
    with pytest.raises(ValueError, match="at least 3 cases" if rule == LARGEST_REMAINDER_RULE else "without a case"):
        split_cases(["a", "b"], rule=rule)
    with pytest.raises(ValueError, match="ratios"):
        split_cases(["a", "b", "c", "d"], ratios=(0.5, 0.5, 0.0), rule=rule)
    with pytest.raises(ValueError, match="ratios"):
        split_cases(["a", "b", "c", "d"], ratios=(0.5, 0.3, 0.3), rule=rule)


def test_site_datalist_pairs_by_file_name(tmp_path):
    _make_site(tmp_path, "S", 4, slices=("010", "002", "007"))
    datalist = site_datalist(tmp_path, "S", (0.5, 0.25, 0.25), 0)
    items = [item for name in SPLITS for item in datalist[name]]
    assert len(items) == 12
    for item in items:
        assert item["image"].replace("/Image/", "/Mask/") == item["label"]
        assert item["image"].startswith("S/S_c")


def test_site_datalist_names_a_slice_without_partner(tmp_path):
    _make_site(tmp_path, "S", 4)
    (tmp_path / "S" / "S_c1" / "Mask" / "004.png").unlink()
    with pytest.raises(ValueError, match=r"S_c1/Image/004\.png"):
        site_datalist(tmp_path, "S", (0.5, 0.25, 0.25), 0)


def test_site_datalist_names_the_site_with_too_few_cases(tmp_path):
    _make_site(tmp_path, "S", 3)
    with pytest.raises(ValueError, match=r"S.*leaves testing without a case"):
        site_datalist(tmp_path, "S", (0.5, 0.25, 0.25), 0)
    assert site_datalist(tmp_path, "S", (0.5, 0.25, 0.25), 0, LARGEST_REMAINDER_RULE)["testing"]
    _make_site(tmp_path, "T", 2)
    with pytest.raises(ValueError, match=r"T.*at least 3 cases"):
        site_datalist(tmp_path, "T", (0.5, 0.25, 0.25), 0, LARGEST_REMAINDER_RULE)


def test_site_datalist_lists_cases_in_the_references_order(tmp_path):
    _make_site(tmp_path, "S", 8)
    datalist = site_datalist(tmp_path, "S")
    # split_cases gives the reference's order: S_c6, S_c2, S_c1, S_c7 for training with these names
    assert [item["image"] for item in datalist["training"][:3]] == [
        "S/S_c6/Image/003.png", "S/S_c6/Image/004.png", "S/S_c2/Image/003.png",
    ]


def test_write_datalists_structure_paths_and_union(tmp_path):
    dataset_2d, datalist_dir = tmp_path / "dataset_2D", tmp_path / "datalist_2D"
    _make_site(dataset_2d, "A", 4)
    _make_site(dataset_2d, "B", 5)
    counts = write_datalists(dataset_2d, datalist_dir, ["A", "B"], seed=0)
    assert counts == {
        "A": {"training": 4, "validation": 2, "testing": 2},
        "B": {"training": 4, "validation": 2, "testing": 4},
    }
    assert sorted(p.name for p in datalist_dir.iterdir()) == ["client_A.json", "client_All.json", "client_B.json"]

    per_site = {site: json.loads((datalist_dir / f"client_{site}.json").read_text()) for site in ("A", "B")}
    merged = json.loads((datalist_dir / "client_All.json").read_text())
    for name in SPLITS:
        assert merged[name] == per_site["A"][name] + per_site["B"][name]
    for datalist in [*per_site.values(), merged]:
        assert set(datalist) == set(SPLITS)
        for items in datalist.values():
            for item in items:
                assert set(item) == {"image", "label"}
                assert (dataset_2d / item["image"]).is_file() and (dataset_2d / item["label"]).is_file()
    for site, datalist in per_site.items():
        cases = [{item["image"].split("/")[1] for item in datalist[name]} for name in SPLITS]
        assert not (cases[0] & cases[1] or cases[0] & cases[2] or cases[1] & cases[2]), site


def test_write_datalists_without_merge_leaves_client_all_alone(tmp_path):
    _make_site(tmp_path / "d", "A", 4)
    write_datalists(tmp_path / "d", tmp_path / "lists", ["A"], merge=False)
    assert [p.name for p in (tmp_path / "lists").iterdir()] == ["client_A.json"]


@pytest.mark.parametrize(
    "rule_args, training",
    [([], REFERENCE_19["training"]), (["--split-rule", LARGEST_REMAINDER_RULE], LARGEST_REMAINDER_19["training"])],
)
def test_cli_split_rule(tmp_path, rule_args, training):
    dataset_2d = tmp_path / "d"
    for case in PATIENTS_19:
        _png(dataset_2d / "S" / case / "Image" / "003.png", 100)
        _png(dataset_2d / "S" / case / "Mask" / "003.png", 255)
    args = ["--dataset-2d-dir", str(dataset_2d), "--output", str(tmp_path / "lists"), "--sites", "S", "--no-merge"]
    assert datalist_cli.main(args + rule_args) == 0
    written = json.loads((tmp_path / "lists" / "client_S.json").read_text())
    assert [item["image"].split("/")[1] for item in written["training"]] == training
