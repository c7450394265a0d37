"""Text formatting for the gap report: numbers, site names, Markdown, plain-text and CSV tables."""

import csv
import io
import math
from collections.abc import Sequence
from typing import Any


def fmt(value: float, digits: int = 4) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def fmt_signed(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:+.4f}"


def fmt_mean_std(mean: float, std: float) -> str:
    """`mean ± std`, or the mean alone where there is no spread (one seed)."""
    return fmt(mean) if not math.isfinite(std) or not math.isfinite(mean) else f"{mean:.4f} ± {std:.4f}"


def interval(low: float | None, high: float | None) -> str:
    return "-" if low is None or high is None else f"[{low:+.4f}, {high:+.4f}]"


def pct(value: float) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.1%}"


def none_if_nan(value):
    """JSON has no NaN: None in its place."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def short(site: str) -> str:
    return site.removeprefix("client_")


def site_label(site: str, unseen: Sequence[str]) -> str:
    """The site's short name, marked when it is unseen."""
    return short(site) + (" (unseen)" if site in unseen else "")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(f"{cell:<{w}}" if i == 0 else f"{cell:>{w}}" for i, (cell, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(header), "-" * (sum(widths) + 2 * (len(widths) - 1)), *(line(row) for row in rows)])


def csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()
