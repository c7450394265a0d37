"""The gap report's sentences: whether FedSM's super model closes the gap between FedAvg and
centralized training, and how sure the paired comparisons make that (no files, no models)."""

import math
from collections.abc import Mapping

from result_stat.gap_stats import Comparison


def closing(fedavg: float, centralized: float, super_dice: float) -> tuple[str, float]:
    """How much of the gap centralized - FedAvg (> 0) the super model closed: ("closed" / "partly closed
    (x% of it)" / "not closed", the share)."""
    closed = (super_dice - fedavg) / (centralized - fedavg)
    if super_dice >= centralized:
        return "closed", closed
    if closed >= 0.005:  # at least 0.5% of the gap, so that the share printed is not 0%
        return f"partly closed ({closed:.0%} of it)", closed
    return "not closed", closed


def gap_verdict(local: float, fedavg: float, centralized: float, super_dice: float,
                variants: Mapping[str, float] | None = None) -> tuple[str, float]:
    """A sentence on the gap between FedAvg and centralized training, and the share of it that the
    FedSM super model closed (NaN when there is no gap); `variants` adds other FedSM runs' super models."""
    if not all(math.isfinite(value) for value in (fedavg, centralized, super_dice)):
        return "The gap cannot be assessed: FedAvg, centralized or FedSM results are missing.", math.nan
    gap = centralized - fedavg
    if gap <= 0:
        verdict = (f"No generalization gap on this data: FedAvg ({fedavg:.4f}) already matches or beats centralized "
                   f"training ({centralized:.4f}); the FedSM super model scores {super_dice:.4f}.")
        return verdict, math.nan
    how, closed = closing(fedavg, centralized, super_dice)
    verdict = (f"Gap centralized - FedAvg = {gap:+.4f} pooled Dice ({centralized:.4f} vs {fedavg:.4f}); "
               f"FedSM super model {super_dice:.4f}: the gap is {how}.")
    for name, value in (variants or {}).items():
        if math.isfinite(value):
            verdict += f" {name} super model {value:.4f}: {closing(fedavg, centralized, value)[0]}."
    if math.isfinite(local):
        verdict += f" Local-only training: {local:.4f}."
    return verdict, closed


def seed_noise(comparison: Comparison) -> str:
    """Whether `comparison`'s difference is beyond seed noise (its t-interval excludes 0)."""
    if comparison.seeds < 2:
        return "seed noise not measured (one seed)"
    if comparison.t_low > 0 or comparison.t_high < 0:
        return f"beyond seed noise over {comparison.seeds} seeds"
    return f"within seed noise over {comparison.seeds} seeds"


def evidence(run: str, vs_fedavg: Comparison | None, vs_centralized: Comparison | None) -> str:
    """One sentence: does the super model of `run` close the gap on these data, beyond seed noise?"""
    if vs_fedavg is None or vs_centralized is None:
        return f"{run}: FedAvg or centralized results are missing; the gap cannot be assessed."
    gain, shortfall = vs_fedavg.difference, vs_centralized.difference
    numbers = (f"super model - FedAvg {gain:+.4f} ({seed_noise(vs_fedavg)}), "
               f"super model - centralized {shortfall:+.4f} ({seed_noise(vs_centralized)})")
    if gain - shortfall <= 0:
        return f"{run}: no gap to close on these data (FedAvg matches centralized); {numbers}."
    if vs_fedavg.seeds < 2:
        how = closing(0.0, gain - shortfall, gain)[0]
        return f"{run}: the gap is {how} with one seed, so whether that is beyond seed noise is unknown; {numbers}."
    better = vs_fedavg.t_low > 0
    reaches = vs_centralized.t_high >= 0
    if better and reaches:
        how = "closes the gap: better than FedAvg and not below centralized, beyond seed noise"
    elif better:
        how = f"narrows the gap ({gain / (gain - shortfall):.0%} of it) beyond seed noise but stays below centralized"
    elif vs_fedavg.t_high < 0:
        how = "is worse than FedAvg beyond seed noise"
    else:
        how = "does not close the gap beyond seed noise"
    return f"{run}: FedSM {how}; {numbers}."


def noise_note(fedavg: float, fedsm_global: float) -> str:
    """FedAvg and FedSM's global model are trained alike: their difference measures run-to-run noise."""
    if not (math.isfinite(fedavg) and math.isfinite(fedsm_global)):
        return ""
    return (f"FedAvg and FedSM's global model are trained alike (same initial model, data order, local training "
            f"and step-weighted averaging); they differ by floating-point summation order, which grows over "
            f"rounds, and by the round picked as best. Their pooled difference, {fedsm_global - fedavg:+.4f}, "
            f"indicates how large run-to-run noise is here.")
