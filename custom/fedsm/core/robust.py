"""Bounds on one site's influence on a round.

A site that forgot to normalize its images, or a hostile one, sends well-formed updates of any size
and claims any number of steps. Each bound compares a site with something it does not control alone:

- content: an update that changes nothing (every part empty or zero) is no contribution;
- magnitude: each part's norm must stay within `norm_ratio` times a reference: the larger of the
  lower median of the round's norms (with three or more sites) and the part's scale over the run
  (`run_scale`: the root mean square of the references of the rounds before); a site over it on any
  part is left out of the round (rejected, not clipped: a clipped update still points where the
  broken site's data points);
- weight: a site's aggregation weight (its steps) is at most `steps_ratio` times the larger of the
  lower median of the accepted sites' claims and the claims' scale over the run, and at most its own
  `max_steps` from the job config.

The lower median of two values is the smaller one, so with two sites neither can raise a bound; the
references of past rounds are such medians, so no site sets the run's scale alone either.

Why the run's scale and not the round's alone: an honest gradient grows with how wrong the model is
for that site. Once the selector classifies two sites, their full-batch gradients fall 20-100x while
the third site's stays; measured against the round alone, the one site the selector still has to
learn would be left out every round (docs/deployment.md, "Bounding one site's influence").

The server streams an update into the round's sums as it arrives (holding every site's update would
cost K selector copies), so the verdict comes in two steps: on arrival, an update within the run's
scale is aggregated at once, one over it is held (`exceeds_run_scale`); when the round closes,
`screen_round` judges every update. The round's reference is never below the run's scale, so an
update aggregated at once always passes the screen once there is history; only in a fresh run's
first round can one fail it, and as it cannot be taken out of the sums, that round is discarded.
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

    `steps_ratio` and `norm_ratio` of 0 turn that bound off; `max_steps` caps named sites' weights.
    """

    steps_ratio: float = 3.0
    norm_ratio: float = 10.0
    max_steps: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("steps_ratio", "norm_ratio"):
            value = getattr(self, name)
            if not (value == 0 or value >= 1):
                raise ValueError(f"{name} must be 0 (off) or >= 1, got {value}")
        bad = {site: steps for site, steps in self.max_steps.items() if not (isinstance(steps, int) and steps >= 1)}
        if bad:
            raise ValueError(f"max_steps must map site names to integers >= 1, got {bad}")


@dataclasses.dataclass
class RoundScreen:
    """The verdict on a round's updates: aggregation weights of the accepted sites, the reason each
    other site was left out, the sites whose weight was capped, the parts' references to keep, and
    the reference each part was measured against this round with its source (for the operator's log)."""

    weights: dict[str, float]
    rejected: dict[str, str]
    capped: dict[str, str]
    history: dict[str, list[float]]
    references: dict[str, tuple[float, str]] = dataclasses.field(default_factory=dict)

    def describe_references(self) -> str:
        """One line: each part's reference of the round and where it came from."""
        return "; ".join(f"{part} {value:.4g} ({source})" for part, (value, source) in sorted(self.references.items()))


def lower_median(values: Sequence[float]) -> float:
    """The lower of the two middle values (the middle one for an odd count)."""
    if not values:
        raise ValueError("lower_median of no values")
    return float(sorted(values)[(len(values) - 1) // 2])


def run_scale(history: Sequence[float]) -> float | None:
    """A part's scale over the run: the root mean square of its past rounds' references (None before
    the first). Large early rounds keep counting when later ones are small, as they should: how large
    an honest update may be follows the largest the federation has shown, not its latest lull."""
    if not history:
        return None
    return math.sqrt(float(np.mean(np.square(np.asarray(history, dtype=np.float64)))))


def bounded_claims(claims: Mapping[str, float], ratio: float, maxima: Mapping[str, float] | None = None,
                   history: Sequence[float] = ()) -> dict[str, float]:
    """Each claim at most `ratio` times the larger of the lower median of all claims and the claims'
    `run_scale` over `history` (0: no such bound), and at most its site's entry in `maxima`."""
    bound = math.inf
    if claims and ratio > 0:
        bound = ratio * max(lower_median(list(claims.values())), run_scale(history) or 0.0)
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
    """A part's reference and where it comes from: the larger of the lower median of the round's norms
    (three or more) and the part's `run_scale`; None when there is neither."""
    candidates = [(run_scale(history), "the run's scale")]
    if len(norms) >= 3:
        candidates.append((lower_median(norms), "the round's lower median"))
    known = [(value, source) for value, source in candidates if value is not None]
    return max(known) if known else (None, "")


def has_content(norms: Mapping[str, float]) -> bool:
    """Whether an update changes anything (some part has a nonzero norm)."""
    return any(norms.values())


def exceeds_run_scale(steps: int, norms: Mapping[str, float], bounds: InfluenceBounds,
                      history: Mapping[str, Sequence[float]]) -> str | None:
    """Why an update must wait for the round's screen: its steps or a part's norm over the bound that
    the run's scale sets; None when it may be aggregated at once (also when there is no history yet).
    Whatever passes here passes `screen_round`, whose references are never below the run's scale."""
    scale = run_scale(history.get(STEPS_HISTORY, ()))
    if bounds.steps_ratio > 0 and scale is not None and steps > bounds.steps_ratio * scale:
        return f"{steps} local steps"
    for part, value in sorted(norms.items()):
        scale = run_scale(history.get(part, ()))
        if bounds.norm_ratio > 0 and scale is not None and value > bounds.norm_ratio * scale:
            return f"{part} norm {value:.4g}"
    return None


def screen_round(steps: Mapping[str, int], norms: Mapping[str, Mapping[str, float]], bounds: InfluenceBounds,
                 history: Mapping[str, Sequence[float]]) -> RoundScreen:
    """Decide which of a round's well-formed updates count and with which weight (see the module)."""
    rejected = {site: "no effective content (every part empty or zero)"
                for site, site_norms in norms.items() if not has_content(site_norms)}
    candidates = {site: site_norms for site, site_norms in norms.items() if site not in rejected}
    new_history = {part: list(values) for part, values in history.items()}
    references = {}
    for part in sorted({part for site_norms in candidates.values() for part in site_norms}):
        values = {site: site_norms[part] for site, site_norms in candidates.items() if part in site_norms}
        reference, source = norm_reference(list(values.values()), history.get(part, []))
        if reference is not None:
            references[part] = (reference, source)
        if bounds.norm_ratio > 0 and reference is not None:
            for site, value in values.items():
                if value > bounds.norm_ratio * reference and site not in rejected:
                    rejected[site] = (f"{part} norm {value:.4g} is over {bounds.norm_ratio:g} x {source} "
                                      f"{reference:.4g}")
        kept = [value for site, value in values.items() if site not in rejected]
        if kept:
            new_history[part] = new_history.get(part, []) + [lower_median(kept)]
    claims = {site: steps[site] for site in candidates if site not in rejected}
    weights = bounded_claims(claims, bounds.steps_ratio, bounds.max_steps, history.get(STEPS_HISTORY, ()))
    capped = {site: f"claimed {claims[site]} local steps, weighted as {weight:g} (max_steps_ratio "
                    f"{bounds.steps_ratio:g} x the round's lower median claim or the run's scale, or the site's "
                    "max_steps)"
              for site, weight in weights.items() if weight < claims[site]}
    if claims:
        new_history[STEPS_HISTORY] = new_history.get(STEPS_HISTORY, []) + [lower_median(list(claims.values()))]
    return RoundScreen(weights=weights, rejected=rejected, capped=capped, history=new_history,
                       references=references)


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
