import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_preparation.datalist import SPLITS, site_datalist, split_cases, write_datalists


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 4), value, dtype=np.uint8)).save(path)


def _make_site(root: Path, site: str, n_cases: int, slices=("003", "004")) -> None:
    for k in range(n_cases):
        for name in slices:
            _png(root / site / f"{site}_c{k}" / "Image" / f"{name}.png", 100)
            _png(root / site / f"{site}_c{k}" / "Mask" / f"{name}.png", 255)


def test_split_cases_is_deterministic_by_case_and_order_independent():
    cases = [f"case{k:02d}" for k in range(8)]
    split = split_cases(cases, seed=3)
    assert {name: len(split[name]) for name in SPLITS} == {"training": 4, "validation": 2, "testing": 2}
    assigned = [case for name in SPLITS for case in split[name]]
    assert sorted(assigned) == cases  # every case exactly once
    shuffled = cases[:]
    random.Random(1).shuffle(shuffled)
    assert split_cases(shuffled, seed=3) == split
    assert split_cases(cases, seed=3) == split


def test_split_cases_seed_changes_the_assignment():
    cases = [f"case{k:02d}" for k in range(20)]
    assert split_cases(cases, seed=0) != split_cases(cases, seed=1)


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
def test_split_cases_respects_ratios_and_gives_every_split_a_case(n_cases, ratios, sizes):
    split = split_cases([f"c{k}" for k in range(n_cases)], ratios=ratios, seed=0)
    assert tuple(len(split[name]) for name in SPLITS) == sizes


def test_split_cases_rejects_too_few_cases_and_bad_ratios():
    with pytest.raises(ValueError, match="at least 3 cases"):
        split_cases(["a", "b"])
    with pytest.raises(ValueError, match="ratios"):
        split_cases(["a", "b", "c"], ratios=(0.5, 0.5, 0.0))
    with pytest.raises(ValueError, match="ratios"):
        split_cases(["a", "b", "c"], ratios=(0.5, 0.3, 0.3))


def test_site_datalist_pairs_by_file_name(tmp_path):
    _make_site(tmp_path, "S", 3, slices=("010", "002", "007"))
    datalist = site_datalist(tmp_path, "S", (0.5, 0.25, 0.25), 0)
    items = [item for name in SPLITS for item in datalist[name]]
    assert len(items) == 9
    for item in items:
        assert item["image"].replace("/Image/", "/Mask/") == item["label"]
        assert item["image"].startswith("S/S_c")


def test_site_datalist_names_a_slice_without_partner(tmp_path):
    _make_site(tmp_path, "S", 3)
    (tmp_path / "S" / "S_c1" / "Mask" / "004.png").unlink()
    with pytest.raises(ValueError, match=r"S_c1/Image/004\.png"):
        site_datalist(tmp_path, "S", (0.5, 0.25, 0.25), 0)


def test_site_datalist_names_the_site_with_too_few_cases(tmp_path):
    _make_site(tmp_path, "S", 2)
    with pytest.raises(ValueError, match=r"S.*at least 3 cases"):
        site_datalist(tmp_path, "S", (0.5, 0.25, 0.25), 0)


def test_write_datalists_structure_paths_and_union(tmp_path):
    dataset_2d, datalist_dir = tmp_path / "dataset_2D", tmp_path / "datalist_2D"
    _make_site(dataset_2d, "A", 4)
    _make_site(dataset_2d, "B", 3)
    counts = write_datalists(dataset_2d, datalist_dir, ["A", "B"], seed=0)
    assert counts == {
        "A": {"training": 4, "validation": 2, "testing": 2},
        "B": {"training": 2, "validation": 2, "testing": 2},
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
    _make_site(tmp_path / "d", "A", 3)
    write_datalists(tmp_path / "d", tmp_path / "lists", ["A"], merge=False)
    assert [p.name for p in (tmp_path / "lists").iterdir()] == ["client_A.json"]
