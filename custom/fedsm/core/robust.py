"""Bounds on one site's influence on a round.

A site that forgot to normalize its images, or a hostile one, sends well-formed updates of any size
and claims any number of steps. Each bound compares a site with something it does not control alone:

- content: an update that changes nothing (every part empty or zero) is no contribution;
- magnitude: each part's norm must stay within `norm_ratio` times a reference: the lower median of
  the round's norms with three or more sites, else the median of that part's recent references;
  a site over it on any part is left out of the round (rejected, not clipped: a clipped update still
  points where the broken site's data points);
- weight: a site's aggregation weight (its steps) is at most `steps_ratio` times the lower median of
  the accepted sites' claims, and at most its own `max_steps` from the job config.

The lower median of two values is the smaller one, so with two sites neither can raise a bound.

The server streams an update into the round's sums as it arrives (holding every site's update would
cost K selector copies), so the verdict comes in two steps: on arrival, an update within the bounds
of recent rounds is aggregated at once, one over them is held (`exceeds_recent_bounds`); when the
round closes, `screen_round` judges every update against the round's own references. An update that
was aggregated at once but fails that screen (possible only before there is any history, i.e. in a
fresh run's first round) cannot be taken out of the sums, so the round is discarded.
"""

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

from .adam_moments import MOMENT_KINDS, STEP_KEY, moment_key
from .model_kinds import GLOBAL, SELECTOR, SELECTOR_MOMENTS, personalized_key
from .model_set import ModelSet, Weights
from .selector_update import SelectorUpload
from .update_checks import nonfinite_names

GLOBAL_PART, PERSONALIZED_PART, SELECTOR_PART = "global difference", "personalized change", "selector update"
EXP_AVG_PART, EXP_AVG_SQ_PART = "selector exp_avg", "selector exp_avg_sq"
STEPS_HISTORY = "local steps"  # the history of the round's lower median claim


@dataclasses.dataclass(frozen=True)
class InfluenceBounds:
    """The server's bounds on one site's influence (job config, FedSM workflow arguments).

    `steps_ratio` and `norm_ratio` of 0 turn that bound off; `max_steps` caps named sites' weights;
    `history_rounds` is how many past rounds' references a part keeps for rounds of one or two sites.
    """

    steps_ratio: float = 3.0
    norm_ratio: float = 10.0
    max_steps: Mapping[str, int] = dataclasses.field(default_factory=dict)
    history_rounds: int = 5

    def __post_init__(self) -> None:
        for name in ("steps_ratio", "norm_ratio"):
            value = getattr(self, name)
            if not (value == 0 or value >= 1):
                raise ValueError(f"{name} must be 0 (off) or >= 1, got {value}")
        bad = {site: steps for site, steps in self.max_steps.items() if not (isinstance(steps, int) and steps >= 1)}
        if bad:
            raise ValueError(f"max_steps must map site names to integers >= 1, got {bad}")
        if self.history_rounds < 1:
            raise ValueError(f"history_rounds must be >= 1, got {self.history_rounds}")


@dataclasses.dataclass
class RoundScreen:
    """The verdict on a round's updates: aggregation weights of the accepted sites, the reason each
    other site was left out, the sites whose weight was capped, and the parts' references to keep."""

    weights: dict[str, float]
    rejected: dict[str, str]
    capped: dict[str, str]
    history: dict[str, list[float]]


def lower_median(values: Sequence[float]) -> float:
    """The lower of the two middle values (the middle one for an odd count)."""
    if not values:
        raise ValueError("lower_median of no values")
    return float(sorted(values)[(len(values) - 1) // 2])


def bounded_claims(claims: Mapping[str, float], ratio: float, maxima: Mapping[str, float] | None = None
                   ) -> dict[str, float]:
    """Each claim at most `ratio` times the lower median of all claims (0: no such bound) and at most
    its site's entry in `maxima`."""
    bound = ratio * lower_median(list(claims.values())) if claims and ratio > 0 else math.inf
    return {site: min(float(claim), bound, float((maxima or {}).get(site, math.inf)))
            for site, claim in claims.items()}


def part_norms(global_diff: Weights, personalized: Weights, held_personalized: Weights,
               selector: SelectorUpload) -> dict[str, float]:
    """The size of each part of an update: L2 norms of the global difference, of the personalized
    model's change from what the server holds, of the selector difference or gradient and of
    `exp_avg`; for `exp_avg_sq` (a square of gradients) the square root of its sum, so that every
    part scales like a gradient. Parts a site did not send are absent."""
    norms = {GLOBAL_PART: _l2(global_diff.values()),
             PERSONALIZED_PART: _l2(np.subtract(value, held_personalized[name])
                                    for name, value in personalized.items())}
    selector_update = selector.diff if selector.diff is not None else selector.gradient
    if selector_update is not None:
        norms[SELECTOR_PART] = _l2(selector_update.values())
    if selector.moments is not None:
        moments = [(key.split("/", 1)[0], value) for key, value in selector.moments.items() if key != STEP_KEY]
        norms[EXP_AVG_PART] = _l2(value for kind, value in moments if kind == "exp_avg")
        norms[EXP_AVG_SQ_PART] = math.sqrt(sum(float(np.sum(value, dtype=np.float64))
                                               for kind, value in moments if kind == "exp_avg_sq"))
    return norms


def _l2(arrays) -> float:
    """L2 norm over arrays, each reduced in its own dtype (no float64 copy of a 500 MB selector);
    a sum that overflows gives inf, which every bound rejects."""
    total = 0.0
    for array in arrays:
        flat = np.ravel(array)
        total += float(np.dot(flat, flat))
    return math.sqrt(total)


def norm_reference(norms: Sequence[float], history: Sequence[float]) -> tuple[float | None, str]:
    """A part's reference and where it comes from: the lower median of the round's norms with three
    or more, else the median of the part's recent references, else none."""
    if len(norms) >= 3:
        return lower_median(norms), "the round's lower median"
    if history:
        return float(np.median(history)), "the median of recent rounds"
    return None, ""


def has_content(norms: Mapping[str, float]) -> bool:
    """Whether an update changes anything (some part has a nonzero norm)."""
    return any(norms.values())


def exceeds_recent_bounds(steps: int, norms: Mapping[str, float], bounds: InfluenceBounds,
                          history: Mapping[str, Sequence[float]]) -> str | None:
    """Why an update must wait for the round's screen: its steps or a part's norm over the bound that
    recent rounds set; None when it may be aggregated at once (also when there is no history yet)."""
    recent = history.get(STEPS_HISTORY)
    if bounds.steps_ratio > 0 and recent and steps > bounds.steps_ratio * float(np.median(recent)):
        return f"{steps} local steps"
    for part, value in sorted(norms.items()):
        recent = history.get(part)
        if bounds.norm_ratio > 0 and recent and value > bounds.norm_ratio * float(np.median(recent)):
            return f"{part} norm {value:.4g}"
    return None


def screen_round(steps: Mapping[str, int], norms: Mapping[str, Mapping[str, float]], bounds: InfluenceBounds,
                 history: Mapping[str, Sequence[float]]) -> RoundScreen:
    """Decide which of a round's well-formed updates count and with which weight (see the module)."""
    rejected = {site: "no effective content (every part empty or zero)"
                for site, site_norms in norms.items() if not has_content(site_norms)}
    candidates = {site: site_norms for site, site_norms in norms.items() if site not in rejected}
    new_history = {part: list(values) for part, values in history.items()}
    for part in sorted({part for site_norms in candidates.values() for part in site_norms}):
        values = {site: site_norms[part] for site, site_norms in candidates.items() if part in site_norms}
        reference, source = norm_reference(list(values.values()), history.get(part, []))
        if bounds.norm_ratio > 0 and reference is not None:
            for site, value in values.items():
                if value > bounds.norm_ratio * reference and site not in rejected:
                    rejected[site] = (f"{part} norm {value:.4g} is over {bounds.norm_ratio:g} x {source} "
                                      f"{reference:.4g}")
        kept = [value for site, value in values.items() if site not in rejected]
        if kept:
            new_history[part] = (new_history.get(part, []) + [lower_median(kept)])[-bounds.history_rounds:]
    claims = {site: steps[site] for site in candidates if site not in rejected}
    weights = bounded_claims(claims, bounds.steps_ratio, bounds.max_steps)
    capped = {site: f"claimed {claims[site]} local steps, weighted as {weight:g} (max_steps_ratio "
                    f"{bounds.steps_ratio:g} x the round's lower median claim, or the site's max_steps)"
              for site, weight in weights.items() if weight < claims[site]}
    if claims:
        new_history[STEPS_HISTORY] = (new_history.get(STEPS_HISTORY, []) + [lower_median(list(claims.values()))]
                                      )[-bounds.history_rounds:]
    return RoundScreen(weights=weights, rejected=rejected, capped=capped, history=new_history)


def incomplete_moments(moments: Weights, selector_names) -> list[str]:
    """The moment keys missing for the given selector parameters (and the step count)."""
    expected = [moment_key(kind, name) for name in selector_names for kind in MOMENT_KINDS] + [STEP_KEY]
    return [key for key in expected if key not in moments]


def missing_arrays(models: ModelSet, template: ModelSet) -> list[str]:
    """Arrays of `template` that `models` lacks or holds in another shape (`part/array`): a model set
    the next round's tasks could not be built from. Moments may be empty (no step yet), not partial."""
    parts = {GLOBAL: (models.global_model, template.global_model), SELECTOR: (models.selector, template.selector),
             **{personalized_key(client): (models.personalized.get(client, {}), weights)
                for client, weights in template.personalized.items()}}
    missing = [f"{part}/{name}" for part, (have, want) in parts.items() for name, array in want.items()
               if name not in have or np.shape(have[name]) != np.shape(array)]
    if models.selector_moments:
        missing += [f"{SELECTOR_MOMENTS}/{key}"
                    for key in incomplete_moments(models.selector_moments, template.selector)]
    return missing


def nonfinite_arrays(models: ModelSet) -> list[str]:
    """Names (`part/array`) of the arrays of a model set holding NaN or Inf."""
    parts = {GLOBAL: models.global_model, SELECTOR: models.selector, SELECTOR_MOMENTS: models.selector_moments,
             **{personalized_key(client): weights for client, weights in models.personalized.items()}}
    return [f"{part}/{name}" for part, weights in parts.items() for name in nonfinite_names(weights)]
