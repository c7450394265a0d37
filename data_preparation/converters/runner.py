"""Run one converter over its discovered cases: skip known defects and finished cases, write the rest."""

import logging
from dataclasses import dataclass, field
from pathlib import Path

import SimpleITK as sitk

from data_preparation.converters.common import CaseError, CaseSource, Converter, Discovery, LayoutError
from data_preparation.converters.volumes import write_nifti
from data_preparation.known_defects import dropped_cases
from fedsm.io.progress import progress

logger = logging.getLogger(__name__)


@dataclass
class ConversionReport:
    """Outcome for one raw source; `dropped` and `failed` map a case (or file) name to the reason.

    `skipped` were converted by an earlier run; `unlabelled` have no segmentation in the download.
    """

    source: str
    converted: list[CaseSource] = field(default_factory=list)
    skipped: list[CaseSource] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    unlabelled: list[str] = field(default_factory=list)


def discover_source(converter: Converter, raw_dir: Path) -> Discovery:
    """The cases of `converter` under `raw_dir/<source>`; `LayoutError` if the folder holds none."""
    source_dir = Path(raw_dir) / converter.source
    if not source_dir.is_dir():
        raise LayoutError(f"{source_dir}: no such folder")
    found = converter.discover(source_dir)
    if not found.cases and not found.failed:
        raise LayoutError(f"{source_dir}: no cases found; see data_preparation/README.md for the expected layout")
    return found


def output_paths(dataset_dir: Path, case: CaseSource) -> tuple[Path, Path]:
    """`<dataset_dir>/<site>/Image/<case>.nii.gz` and the matching Mask path."""
    site_dir = Path(dataset_dir) / case.site
    return site_dir / "Image" / f"{case.case}.nii.gz", site_dir / "Mask" / f"{case.case}.nii.gz"


def convert_case(converter: Converter, case: CaseSource, dataset_dir: Path) -> None:
    """Load, check and write one case; a mask without foreground is a `CaseError`."""
    image, mask = converter.load_pair(case)
    if not sitk.GetArrayViewFromImage(mask).any():
        raise CaseError(f"mask is empty for case {case.case}: {case.mask}")
    image_out, mask_out = output_paths(dataset_dir, case)
    write_nifti(image, image_out)
    try:
        write_nifti(mask, mask_out)
    except BaseException:
        image_out.unlink(missing_ok=True)
        raise


def convert_source(
    converter: Converter, discovery: Discovery, dataset_dir: Path, sites: set[str] | None = None
) -> ConversionReport:
    """Convert the discovered cases of `converter` (only those of `sites`, if given).

    A case whose outputs both exist is skipped; a failing case is logged and recorded, the others go on.
    """
    dropped = dropped_cases(converter.source)
    report = ConversionReport(converter.source, unlabelled=list(discovery.unlabelled))
    for name, reason in discovery.failed.items():
        if name in dropped:
            report.dropped[name] = dropped[name]
        else:
            report.failed[name] = reason
    cases = [case for case in discovery.cases if sites is None or case.site in sites]
    for case in progress(cases, desc=f"converting {converter.source}", unit="case"):
        if case.case in dropped:
            report.dropped[case.case] = dropped[case.case]
        elif all(path.exists() for path in output_paths(dataset_dir, case)):
            report.skipped.append(case)
        else:
            try:
                convert_case(converter, case, dataset_dir)
                report.converted.append(case)
            except CaseError as err:
                report.failed[case.case] = str(err)
            except Exception as err:  # noqa: BLE001 - SimpleITK, pydicom and highdicom raise many unrelated types
                report.failed[case.case] = f"{type(err).__name__}: {err} (image {case.image}, mask {case.mask})"
    for name, reason in report.failed.items():
        logger.error("%s: %s failed: %s", converter.source, name, reason)
    logger.info(
        "%s: %d cases converted, %d already there, %d dropped (known defects), %d failed, %d skipped: no segmentation",
        converter.source,
        len(report.converted),
        len(report.skipped),
        len(report.dropped),
        len(report.failed),
        len(report.unlabelled),
    )
    return report
