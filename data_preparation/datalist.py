"""Datalist JSONs for the 2D dataset: per-site training/validation/testing splits made by case.

<datalist_dir>/client_<site>.json = {"training": [...], "validation": [...], "testing": [...]},
each item {"image": "<site>/<case>/Image/<zzz>.png", "label": "<site>/<case>/Mask/<zzz>.png"}
relative to the 2D dataset root; client_All.json merges the requested sites split by split.

Two split rules (`--split-rule`):
- `reference` (default): the cases of NVFlare's prostate example (its `prepare_data_split.py`). The
  case names are sorted, shuffled by NumPy's legacy generator seeded with `seed` (`RandomState`, the
  generator behind `np.random.seed`), and cut at round(n * train) and that plus round(n * valid),
  with Python's round() (half to even: 9.5 -> 10, 6.5 -> 6). E.g. 50/25/25 of 19 cases: 10/5/4.
  A part that gets no case is an error (50/25/25 needs at least 4 cases).
- `largest-remainder`: this repository's own rule. A permutation by `np.random.default_rng(seed)`,
  sizes by largest remainder with at least one case per part (so 3 cases suffice). E.g. 19 cases: 9/5/5.
"""

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from fedsm.io.atomic import write_text_atomic

logger = logging.getLogger(__name__)

SPLITS = ("training", "validation", "testing")
MERGED_NAME = "All"
REFERENCE_RULE, LARGEST_REMAINDER_RULE = "reference", "largest-remainder"
SPLIT_RULES = (REFERENCE_RULE, LARGEST_REMAINDER_RULE)


def _check_ratios(ratios: Sequence[float]) -> None:
    if len(ratios) != 3 or min(ratios) <= 0 or not math.isclose(sum(ratios), 1.0, abs_tol=1e-6):
        raise ValueError(f"ratios must be three positive numbers summing to 1, got {tuple(ratios)}")


def reference_split_sizes(n_cases: int, ratios: Sequence[float]) -> tuple[int, int, int]:
    """Cases per split as the reference cuts them: training ends at round(n * train), validation after
    round(n * valid) more, testing gets the rest; Python's round() rounds half to even.

    E.g. 50/25/25: 4 -> (2, 1, 1), 5 -> (2, 1, 2), 7 -> (4, 2, 1), 13 -> (6, 3, 4), 19 -> (10, 5, 4).
    Raises ValueError when a split would get no case (3 -> (2, 1, 0)).
    """
    _check_ratios(ratios)
    training_end = round(n_cases * ratios[0])
    validation_end = min(training_end + round(n_cases * ratios[1]), n_cases)
    sizes = (training_end, validation_end - training_end, n_cases - validation_end)
    empty = [split for split, size in zip(SPLITS, sizes) if size == 0]
    if empty:
        raise ValueError(
            f"the {REFERENCE_RULE} split of {n_cases} cases at ratios {tuple(ratios)} leaves {' and '.join(empty)} "
            f"without a case; add cases or use the {LARGEST_REMAINDER_RULE} split rule"
        )
    return sizes


def largest_remainder_sizes(n_cases: int, ratios: Sequence[float]) -> tuple[int, int, int]:
    """Cases per split by largest remainder (ties favour training, then validation), at least 1 each.

    E.g. 50/25/25: 3 -> (1, 1, 1), 4 -> (2, 1, 1), 6 -> (3, 2, 1), 7 -> (3, 2, 2), 8 -> (4, 2, 2).
    """
    _check_ratios(ratios)
    if n_cases < 3:
        raise ValueError(f"need at least 3 cases for training/validation/testing, got {n_cases}")
    quotas = [round(n_cases * ratio / sum(ratios), 9) for ratio in ratios]
    sizes = [math.floor(quota) for quota in quotas]
    by_remainder = sorted(range(3), key=lambda k: (sizes[k] - quotas[k], k))
    for k in by_remainder[: n_cases - sum(sizes)]:
        sizes[k] += 1
    for k in range(3):
        if sizes[k] == 0:  # take one case from the largest split, which has at least 2
            sizes[max(range(3), key=lambda j: sizes[j])] -= 1
            sizes[k] = 1
    return sizes[0], sizes[1], sizes[2]


def split_cases(
    cases: Iterable[str], ratios: Sequence[float] = (0.5, 0.25, 0.25), seed: int = 0, rule: str = REFERENCE_RULE
) -> dict[str, list[str]]:
    """Shuffle the sorted case names with `seed` and cut them into training/validation/testing by `rule`
    (see the module docstring).

    Deterministic and independent of the input order. With the reference rule each list keeps the
    shuffled order, the order of the reference's datalists; with the largest-remainder rule it is sorted.
    """
    names = sorted(cases)
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate case names in {names}")
    if rule == REFERENCE_RULE:
        sizes = reference_split_sizes(len(names), ratios)
        order = np.random.RandomState(seed).permutation(len(names))
    elif rule == LARGEST_REMAINDER_RULE:
        sizes = largest_remainder_sizes(len(names), ratios)
        order = np.random.default_rng(seed).permutation(len(names))
    else:
        raise ValueError(f"unknown split rule {rule!r}, expected one of {SPLIT_RULES}")
    shuffled = [names[i] for i in order]
    bounds = np.cumsum((0,) + sizes)
    parts = [shuffled[bounds[k] : bounds[k + 1]] for k in range(len(SPLITS))]
    return {split: part if rule == REFERENCE_RULE else sorted(part) for split, part in zip(SPLITS, parts)}


def _case_items(site_dir: Path, case: str) -> list[dict[str, str]]:
    """Image/label items of one case, paired by PNG file name; errors name the unpaired files."""
    case_dir = site_dir / case
    images = {p.name for p in (case_dir / "Image").glob("*.png")}
    masks = {p.name for p in (case_dir / "Mask").glob("*.png")}
    unpaired = [str(case_dir / "Image" / n) for n in sorted(images - masks)]
    unpaired += [str(case_dir / "Mask" / n) for n in sorted(masks - images)]
    if unpaired:
        raise ValueError(f"PNG slices without an image/mask partner of the same name: {', '.join(unpaired)}")
    if not images:
        raise ValueError(f"{case_dir}: no PNG slices in Image/ and Mask/")
    prefix = f"{site_dir.name}/{case}"
    return [{"image": f"{prefix}/Image/{n}", "label": f"{prefix}/Mask/{n}"} for n in sorted(images)]


def site_datalist(
    dataset_2d_dir: str | os.PathLike,
    site: str,
    ratios: Sequence[float] = (0.5, 0.25, 0.25),
    seed: int = 0,
    split_rule: str = REFERENCE_RULE,
) -> dict[str, list[dict[str, str]]]:
    """Datalist of one site: its case folders split by case, items in the split's case order, then by slice."""
    site_dir = Path(dataset_2d_dir) / site
    if not site_dir.is_dir():
        raise ValueError(f"{site_dir}: no such folder")
    cases = [p.name for p in site_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    try:
        split = split_cases(cases, ratios, seed, split_rule)
    except ValueError as err:
        raise ValueError(f"{site_dir}: {err}") from err
    items = {case: _case_items(site_dir, case) for case in sorted(cases)}
    return {name: [item for case in split[name] for item in items[case]] for name in SPLITS}


def _dump(datalist: dict) -> str:
    return json.dumps(datalist, indent=2) + "\n"


def write_datalists(
    dataset_2d_dir: str | os.PathLike,
    datalist_dir: str | os.PathLike,
    sites: Sequence[str],
    ratios: Sequence[float] = (0.5, 0.25, 0.25),
    seed: int = 0,
    merge: bool = True,
    split_rule: str = REFERENCE_RULE,
) -> dict[str, dict[str, int]]:
    """Write client_<site>.json per site (and client_All.json merging them when `merge`), atomically.

    Every datalist is built before any file is written. Returns the number of items (slices) per site
    per split.
    """
    if MERGED_NAME in sites or len(set(sites)) != len(sites) or not sites:
        raise ValueError(f"sites must be distinct, non-empty and not {MERGED_NAME!r}, got {list(sites)}")
    datalists = {site: site_datalist(dataset_2d_dir, site, ratios, seed, split_rule) for site in sites}
    if merge:
        datalists[MERGED_NAME] = {
            split: [item for site in sites for item in datalists[site][split]] for split in SPLITS
        }
    for name, datalist in datalists.items():
        path = Path(datalist_dir) / f"client_{name}.json"
        write_text_atomic(path, _dump(datalist))
        logger.info("wrote %s", path)
    return {site: {split: len(datalists[site][split]) for split in SPLITS} for site in sites}


def datalist_summary(datalist: dict[str, list[dict[str, str]]]) -> dict[str, tuple[int, int]]:
    """(cases, slices) per split of a datalist; a case is the <site>/<case> prefix of the image path."""
    return {
        split: (len({tuple(item["image"].split("/")[:2]) for item in datalist[split]}), len(datalist[split]))
        for split in SPLITS
    }


def format_summary(datalist_dir: str | os.PathLike, names: Sequence[str]) -> str:
    """A table of cases and slices per split for the datalists client_<name>.json in `datalist_dir`."""
    rows = [f"{'datalist':<24}{'split':<12}{'cases':>7}{'slices':>8}"]
    for name in names:
        datalist = json.loads((Path(datalist_dir) / f"client_{name}.json").read_text())
        for split, (n_cases, n_slices) in datalist_summary(datalist).items():
            rows.append(f"{'client_' + name:<24}{split:<12}{n_cases:>7}{n_slices:>8}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """CLI: write the datalists of the given sites and print a summary table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset-2d-dir", required=True, type=Path, help="2D dataset root (holds <site>/<case>)")
    parser.add_argument("--output", required=True, type=Path, help="datalist folder to write")
    parser.add_argument("--sites", nargs="+", required=True, help="site folder names")
    parser.add_argument("--ratios", nargs=3, type=float, default=(0.5, 0.25, 0.25), metavar=("TRAIN", "VAL", "TEST"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--split-rule", choices=SPLIT_RULES, default=REFERENCE_RULE, help="how cases are cut (see above)"
    )
    parser.add_argument("--no-merge", action="store_true", help=f"do not write client_{MERGED_NAME}.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    write_datalists(
        args.dataset_2d_dir, args.output, args.sites, args.ratios, args.seed, not args.no_merge, args.split_rule
    )
    print(format_summary(args.output, list(args.sites) + ([] if args.no_merge else [MERGED_NAME])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
