"""The one entry point: raw downloads -> 3D NIfTI per site -> 2D slices -> datalists, then a summary.

    python -m data_preparation.prepare --raw RAW_DIR --output OUT_DIR [--sites ...] [--split 0.5 0.25 0.25] [--seed 0]
        [--split-rule {reference,largest-remainder}] [--nrrd-geometry {header,image}]

Writes OUT_DIR/dataset/<site>/{Image,Mask}/<case>.nii.gz, OUT_DIR/dataset_2D/<site>/<case>/{Image,Mask}/*.png
and OUT_DIR/datalist_2D/client_<site>.json plus client_All.json. Finished cases are skipped on a re-run.
Exit status: 0 all went well, 1 some cases or sites failed (listed at the end), 2 nothing was done
(wrong raw layout or arguments).
"""

import argparse
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from data_preparation.converters import CONVERTERS, SOURCE_OF_SITE, nci_isbi
from data_preparation.converters.common import Converter, Discovery, LayoutError
from data_preparation.converters.runner import ConversionReport, convert_source, discover_source
from data_preparation.datalist import (
    MERGED_NAME,
    REFERENCE_RULE,
    SPLIT_RULES,
    format_summary,
    site_datalist,
    write_datalists,
)
from data_preparation.slicing import SiteSlices, slice_site

logger = logging.getLogger(__name__)


@dataclass
class Outcome:
    """Everything a run did, for the summary."""

    sites: list[str]
    conversions: list[ConversionReport] = field(default_factory=list)
    slices: dict[str, SiteSlices] = field(default_factory=dict)
    site_errors: dict[str, str] = field(default_factory=dict)
    datalist_sites: list[str] = field(default_factory=list)

    def failures(self) -> list[str]:
        """One line per failed case, file or site."""
        lines = [f"{r.source}: {name}: {why}" for r in self.conversions for name, why in r.failed.items()]
        lines += [f"{s.site}: {case}: {why}" for s in self.slices.values() for case, why in s.failed.items()]
        lines += [f"{site}: {why}" for site, why in self.site_errors.items()]
        return lines


def select(raw_dir: Path, sites: list[str] | None) -> tuple[list[Converter], list[str]]:
    """The converters to run and the sites to produce: those named, or every source found under `raw_dir`."""
    if sites:
        sources = {SOURCE_OF_SITE[site] for site in sites}
        converters = [c for c in CONVERTERS.values() if c.source in sources]
        return converters, [s for s in SOURCE_OF_SITE if s in sites]
    converters = [c for c in CONVERTERS.values() if (raw_dir / c.source).is_dir()]
    if not converters:
        raise LayoutError(f"{raw_dir}: none of the source folders {', '.join(CONVERTERS)} found")
    return converters, [site for c in converters for site in c.sites]


def with_options(converter: Converter, nrrd_geometry: str | None) -> Converter:
    """`converter` set up with the command-line options that concern it."""
    if converter.source == nci_isbi.SOURCE:
        return nci_isbi.converter(nrrd_geometry)
    return converter


def discover_all(converters: list[Converter], raw_dir: Path) -> dict[str, Discovery]:
    """Discover every source before anything is written; one `LayoutError` listing every bad source."""
    found, errors = {}, []
    for converter in converters:
        try:
            found[converter.source] = discover_source(converter, raw_dir)
        except LayoutError as err:
            errors.append(str(err))
    if errors:
        raise LayoutError("\n".join(errors))
    return found


def build_2d(
    outcome: Outcome, out_dir: Path, ratios: tuple[float, float, float], seed: int, split_rule: str = REFERENCE_RULE
) -> None:
    """Slice every site that has converted cases, then write the datalists of the sites that can be split."""
    dataset_dir, dataset_2d_dir = out_dir / "dataset", out_dir / "dataset_2D"
    for site in outcome.sites:
        if not (dataset_dir / site / "Image").is_dir():
            outcome.site_errors[site] = "no converted case"
            continue
        try:
            outcome.slices[site] = slice_site(dataset_dir, site, dataset_2d_dir)
            site_datalist(dataset_2d_dir, site, ratios, seed, split_rule)  # can it be split? (before any is written)
        except ValueError as err:
            outcome.site_errors[site] = str(err)
            continue
        outcome.datalist_sites.append(site)
    if outcome.datalist_sites:
        write_datalists(
            dataset_2d_dir, out_dir / "datalist_2D", outcome.datalist_sites, ratios, seed, split_rule=split_rule
        )


def summary(outcome: Outcome, out_dir: Path) -> str:
    """Cases per site and stage, the datalist table (cases and slices per split), then the dropped,
    unlabelled (skipped: no segmentation) and failed cases."""
    dataset_dir, dataset_2d_dir = out_dir / "dataset", out_dir / "dataset_2D"
    rows = [f"{'site':<14}{'new 3D':>8}{'3D cases':>10}{'2D cases':>10}{'slices':>8}"]
    for site in outcome.sites:
        new = sum(case.site == site for r in outcome.conversions for case in r.converted)
        cases_3d = len(list((dataset_dir / site / "Image").glob("*.nii.gz")))
        cases_2d = [p for p in (dataset_2d_dir / site).glob("*/Image")]
        slices = sum(len(list(p.glob("*.png"))) for p in cases_2d)
        rows.append(f"{site:<14}{new:>8}{cases_3d:>10}{len(cases_2d):>10}{slices:>8}")
    parts = ["\n".join(rows)]
    if outcome.datalist_sites:
        parts.append(format_summary(out_dir / "datalist_2D", outcome.datalist_sites + [MERGED_NAME]))
    dropped = [f"  {r.source}: {name}: {why}" for r in outcome.conversions for name, why in r.dropped.items()]
    if dropped:
        parts.append("dropped (known defects):\n" + "\n".join(dropped))
    unlabelled = [f"  {r.source}: {', '.join(r.unlabelled)}" for r in outcome.conversions if r.unlabelled]
    if unlabelled:
        count = sum(len(r.unlabelled) for r in outcome.conversions)
        parts.append(f"skipped: no segmentation ({count}):\n" + "\n".join(unlabelled))
    failures = outcome.failures()
    parts.append(
        f"failed ({len(failures)}):\n" + "\n".join(f"  {line}" for line in failures) if failures else "no failures"
    )
    return "\n\n".join(parts)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", required=True, type=Path, help="folder holding the raw downloads (see README)")
    parser.add_argument("--output", required=True, type=Path, help="folder for dataset/, dataset_2D/, datalist_2D/")
    parser.add_argument("--sites", nargs="+", choices=list(SOURCE_OF_SITE), help="default: every source found")
    parser.add_argument("--split", nargs=3, type=float, default=(0.5, 0.25, 0.25), metavar=("TRAIN", "VAL", "TEST"))
    parser.add_argument("--seed", type=int, default=0, help="seed of the split by case")
    parser.add_argument(
        "--split-rule",
        choices=SPLIT_RULES,
        default=REFERENCE_RULE,
        help="reference: the cases NVFlare's prostate example assigns (needs 4 cases a site at 50/25/25); "
        "largest-remainder: this repository's own rule, at least one case per split (see data_preparation/README.md)",
    )
    parser.add_argument(
        "--nrrd-geometry",
        choices=nci_isbi.NRRD_GEOMETRIES,
        help="NCI-ISBI: place every mask by its NRRD header, or copy the image geometry onto its voxels; "
        "default: check that both agree where the voxel grids have the same size (see README)",
    )
    args = parser.parse_args(argv)
    if min(args.split) <= 0 or abs(sum(args.split) - 1.0) > 1e-6:
        parser.error(f"--split needs three positive ratios summing to 1, got {args.split}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the whole chain; see the module docstring for the exit status."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        converters, sites = select(args.raw, args.sites)
        converters = [with_options(converter, args.nrrd_geometry) for converter in converters]
        discoveries = discover_all(converters, args.raw)
    except LayoutError as err:
        print(f"wrong raw layout, nothing written:\n{err}", file=sys.stderr)
        return 2
    outcome = Outcome(sites)
    for converter in converters:
        report = convert_source(converter, discoveries[converter.source], args.output / "dataset", set(sites))
        outcome.conversions.append(report)
    build_2d(outcome, args.output, tuple(args.split), args.seed, args.split_rule)
    print(summary(outcome, args.output))
    return 1 if outcome.failures() else 0


if __name__ == "__main__":
    sys.exit(main())
