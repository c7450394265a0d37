"""The pieces of the federated test evaluation: site totals, their messages, the routing sentence."""

import numpy as np
import pytest
from nvflare.app_common.decomposers import common_decomposers
from nvflare.fuel.utils import fobs

from fedsm.evaluation import (UNKNOWN_SITE, ImageResults, SiteTotals, pooled_totals, routing_note, summarize)
from fedsm.flare.dxo_codec import MessageError
from fedsm.flare.evaluation_messages import EvaluationTask, totals_from_shareable, totals_to_shareable

UNET = {"w": (3, 2), "b": (2,)}
SELECTOR = {"fc": (4, 3)}


def _results(rng, count, label):
    super_dice, global_dice = rng.random(count), rng.random(count)
    super_dice[rng.random(count) < 0.2] = np.nan  # empty masks
    global_dice[np.isnan(super_dice)] = np.nan
    return ImageResults(own_label=np.full(count, label), top=rng.integers(0, 3, count), confidence=rng.random(count),
                        route=rng.integers(-1, 3, count), super_dice=super_dice, global_dice=global_dice)


def test_pooled_site_totals_equal_the_summary_of_all_images_together():
    rng = np.random.default_rng(0)
    per_site = [_results(rng, count, label) for label, count in enumerate((17, 5, 40))]
    pooled = pooled_totals(SiteTotals.of(r) for r in per_site).summary("pooled")
    together = summarize("pooled", ImageResults.concat(per_site))
    for field in ("images", "super_dice", "global_dice", "selector_accuracy", "personalized_share"):
        assert getattr(pooled, field) == pytest.approx(getattr(together, field), abs=1e-12), field
    unknown = SiteTotals.of(_results(rng, 4, UNKNOWN_SITE)).summary("new site")
    assert np.isnan(unknown.selector_accuracy) and unknown.images == 4


def _weights(shapes, value):
    return {name: np.full(shape, value, np.float32) for name, shape in shapes.items()}


def _wire(shareable):
    common_decomposers.register()
    return fobs.loads(fobs.dumps(shareable))


def test_an_evaluation_task_travels_with_every_sites_personalized_model():
    task = EvaluationTask(label=UNKNOWN_SITE, threshold=0.9, global_model=_weights(UNET, 1.0),
                          selector=_weights(SELECTOR, 2.0), personalized={0: _weights(UNET, 3.0), 2: _weights(UNET, 4.0)})
    decoded = EvaluationTask.from_shareable(_wire(task.to_shareable(piece_bytes=16)), UNET, SELECTOR)
    assert decoded.label == UNKNOWN_SITE and decoded.threshold == 0.9 and sorted(decoded.personalized) == [0, 2]
    np.testing.assert_array_equal(decoded.personalized[2]["w"], np.full((3, 2), 4.0, np.float32))
    np.testing.assert_array_equal(decoded.selector["fc"], np.full((4, 3), 2.0, np.float32))
    with pytest.raises(MessageError, match="lacks"):
        EvaluationTask.from_shareable(_wire(task.to_shareable()), {**UNET, "extra": (1,)}, SELECTOR)
    task.threshold = 1.5
    with pytest.raises(MessageError, match="threshold"):
        EvaluationTask.from_shareable(_wire(task.to_shareable()), UNET, SELECTOR)


def test_site_totals_are_checked_on_arrival():
    totals = SiteTotals(images=10, known=10, correct=7, routed=4, super_count=9, super_sum=6.3, global_count=9,
                        global_sum=5.1)
    assert totals_from_shareable(_wire(totals_to_shareable(totals))) == totals
    for bad in (dict(correct=11), dict(super_sum=9.5), dict(routed=12), dict(super_sum=float("nan")),
                dict(images=-1)):
        values = {**totals.as_dict(), **bad}
        with pytest.raises(MessageError):
            totals_from_shareable(_wire(totals_to_shareable(SiteTotals(**values))))


def test_the_routing_sentence_says_when_the_super_model_is_the_global_model():
    rng = np.random.default_rng(1)
    results = _results(rng, 8, 0)
    results.route[:] = -1
    assert "the super model equals the global model" in routing_note(summarize("s", results), 0.9)
    results.route[:2] = 0
    assert "25.0% of the test images were routed" in routing_note(summarize("s", results), 0.9)
