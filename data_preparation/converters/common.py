"""What every converter shares: its errors, its description of a raw case, and pairing by case name."""

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import SimpleITK as sitk


# What to do about files that show a download was not unpacked (or not fetched) where the converter looks.
UNPACK_HINTS = {
    ".zip": "the .zip archives were not unpacked: unzip them into this folder",
    ".tar": "the .tar archives were not unpacked: extract them into this folder (tar xf)",
    ".tcia": "a .tcia file is only a download manifest: open it with the NBIA Data Retriever and download "
    "its series into this folder",
}


class LayoutError(ValueError):
    """The raw folder of a source does not look like its documented download; nothing is written."""


class CaseError(ValueError):
    """One case cannot be converted; the message names the file at fault. Other cases go on."""


@dataclass(frozen=True)
class CaseSource:
    """Where the raw image and mask of one case are (a file or a DICOM folder each)."""

    site: str
    case: str
    image: Path
    mask: Path


@dataclass
class Discovery:
    """The paired cases found in a raw folder, the names that could not be paired (name -> why), and the
    image cases the download has no segmentation for (not an error: e.g. most PROSTATEx patients)."""

    cases: list[CaseSource] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    unlabelled: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Converter:
    """One raw source: its folder name under Raw/, the sites it yields, and its two steps.

    `discover(source_dir)` finds and pairs the cases (raises `LayoutError` for a wrong layout);
    `load_pair(case)` returns (image float32, mask uint8 0/1) on the same grid or raises `CaseError`.
    """

    source: str
    sites: tuple[str, ...]
    discover: Callable[[Path], Discovery]
    load_pair: Callable[[CaseSource], tuple[sitk.Image, sitk.Image]]


def visible(paths: Iterable[Path]) -> list[Path]:
    """`paths` without hidden entries (e.g. the `._*` resource forks of archives made on macOS), sorted."""
    return sorted(path for path in paths if not path.name.startswith("."))


def describe_files(files: list[Path]) -> str:
    """Files counted by type, a few names each (most common type first), for layout errors."""
    by_suffix: dict[str, list[str]] = {}
    for path in files:
        by_suffix.setdefault(path.suffix.lower() or "(no extension)", []).append(path.name)
    if not by_suffix:
        return "no files"
    return ", ".join(
        f"{len(names)} {suffix} file(s) ({examples(names)})"
        for suffix, names in sorted(by_suffix.items(), key=lambda item: -len(item[1]))
    )


def examples(names: list[str], limit: int = 3) -> str:
    """The first `limit` names, comma-separated, with '...' when there are more."""
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def layout_error(folder: Path, problem: str, layout: str) -> LayoutError:
    """A `LayoutError` naming `folder`, what is wrong with it, the files below it (and how to unpack the
    archives or fetch the manifests among them), and the expected layout."""
    files = visible(path for path in folder.rglob("*") if path.is_file())
    suffixes = {path.suffix.lower() for path in files}
    hints = "".join(f"; {hint}" for suffix, hint in UNPACK_HINTS.items() if suffix in suffixes)
    return LayoutError(f"{folder}: {problem}; found {describe_files(files)}{hints}; expected layout:\n{layout}")


def require_dirs(source_dir: Path, names: Iterable[str], layout: str) -> None:
    """Raise `LayoutError` unless every folder in `names` exists under `source_dir`."""
    missing = [name for name in names if not (source_dir / name).is_dir()]
    if missing:
        raise layout_error(source_dir, f"missing folder(s) {', '.join(missing)}", layout)


def pair_by_case(site: str, images: Iterable[tuple[str, Path]], masks: Iterable[tuple[str, Path]]) -> Discovery:
    """Pair (case, path) images and masks by case name; duplicates and partnerless files fail by name."""
    found = Discovery()
    indexed = []
    for kind, entries in (("image", images), ("mask", masks)):
        by_case: dict[str, Path] = {}
        for case, path in entries:
            if case in by_case:
                duplicate = f"two {kind}s for case {case}: {by_case[case]} and {path}"
                found.failed[case] = f"{found.failed[case]}; {duplicate}" if case in found.failed else duplicate
            else:
                by_case[case] = path
        indexed.append(by_case)
    image_of, mask_of = indexed
    for case in sorted(image_of.keys() | mask_of.keys()):
        if case in found.failed:
            continue
        if case not in mask_of:
            found.failed[case] = f"image {image_of[case]} has no mask"
        elif case not in image_of:
            found.failed[case] = f"mask {mask_of[case]} has no image"
        else:
            found.cases.append(CaseSource(site, case, image_of[case], mask_of[case]))
    return found
