"""Known defects of the public raw downloads: the one table the converters consult."""

from dataclasses import dataclass
from enum import Enum


class Fix(Enum):
    """What a converter does about a defect."""

    DROP = "drop the case"
    MASK_OF = "use this mask file for another case name"


@dataclass(frozen=True)
class KnownDefect:
    """A defect of `name` (a case, or a mask file name without extension) in raw source `source`."""

    source: str
    name: str
    fix: Fix
    reason: str
    case: str = ""  # the case a MASK_OF file belongs to


KNOWN_DEFECTS = (
    KnownDefect("I2CVB", "Patient_428260", Fix.DROP, "its ground-truth prostate mask misses a slice"),
    KnownDefect("NCI_ISBI", "ProstateDx-01-0055", Fix.DROP, "its image and mask do not match"),
    KnownDefect(
        "NCI_ISBI",
        "ProstateDx-01-0006_correctedLabels",
        Fix.MASK_OF,
        "corrected labels shipped under another file name; they replace any other mask of the case",
        case="ProstateDx-01-0006",
    ),
)


def dropped_cases(source: str) -> dict[str, str]:
    """Case name -> reason, for the cases of `source` to leave out."""
    return {d.name: d.reason for d in KNOWN_DEFECTS if d.source == source and d.fix is Fix.DROP}


def renamed_masks(source: str) -> dict[str, str]:
    """Mask file name (without extension) -> the case it belongs to, for `source`."""
    return {d.name: d.case for d in KNOWN_DEFECTS if d.source == source and d.fix is Fix.MASK_OF}
