"""A well-formed but broken or hostile site, through the server's real result path.

Each reply travels through NVFlare's serialization (`fobs`) into `FedSMController._on_result`, and the
round closes with `_close_round`: the influence bounds (`core.robust`), `FedSMAggregator`, best-model
tracking with the real persistor, and the check of the next model set. Three honest sites and `evil`,
tiny models. Most probes come after one honest round (`warm_models`), which gives the bounds their
history, as in every round of a run but a fresh run's first. Where a test turns a rule off, it shows
that the probe then does harm, so the test would fail without the rule.
"""

import copy

import numpy as np
import pytest
from nvflare.apis.client import Client
from nvflare.apis.controller_spec import ClientTask, Task
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.decomposers import common_decomposers
from nvflare.fuel.utils import fobs

from fedsm.config import TrainConfig
from fedsm.core.adam_moments import STEP_KEY, moment_key
from fedsm.core.model_set import ModelSet
from fedsm.core.selector_update import SelectorUpload
from fedsm.flare.aggregator import FedSMAggregator
from fedsm.flare.messages import FedSMUpdate
from fedsm.flare.persistor import FedSMModelPersistor
from fedsm.flare.workflow import FedSMController
from fedsm.io.checkpoint import best_checkpoint_name, load_checkpoint
from fedsm.selector_training import SELECTOR_TRAININGS
from fedsm.tags import GLOBAL_METRIC, PERSONALIZED_METRIC, SELECTOR_CONFIDENCE, SELECTOR_METRIC

UNET = {"conv.weight": (4, 3), "conv.bias": (3,)}
SELECTOR = {"fc.weight": (4, 5), "fc.bias": (4,)}
LABELS = {"a": 0, "b": 1, "c": 2, "evil": 3}
HONEST = ("a", "b", "c")
STEPS = {"a": 10, "b": 14, "c": 12, "evil": 12}


class RecordingController(FedSMController):
    """The real controller; its panic (which needs a running engine) and its warnings are recorded."""

    def __init__(self, **args):
        super().__init__(client_id_label_mapping=LABELS, min_clients=2, **args)
        self.panics, self.warnings, self.infos = [], [], []

    def system_panic(self, reason, fl_ctx):
        self.panics.append(reason)

    def log_warning(self, fl_ctx, msg, *args, **kwargs):
        self.warnings.append(msg)

    def log_info(self, fl_ctx, msg, *args, **kwargs):
        self.infos.append(msg)

    def log_error(self, fl_ctx, msg, *args, **kwargs):
        self.warnings.append(msg)


def _arrays(shapes, rng, scale=1.0):
    return {name: (rng.standard_normal(shape) * scale).astype(np.float32) for name, shape in shapes.items()}


def _moments(rng, step, exp_avg_scale=0.01, exp_avg_sq_scale=1e-4):
    moments = {STEP_KEY: np.asarray(step, dtype=np.float32)}
    for name, shape in SELECTOR.items():
        moments[moment_key("exp_avg", name)] = (rng.standard_normal(shape) * exp_avg_scale).astype(np.float32)
        moments[moment_key("exp_avg_sq", name)] = (np.abs(rng.standard_normal(shape)) * exp_avg_sq_scale
                                                   ).astype(np.float32)
    return moments


def start_models() -> ModelSet:
    rng = np.random.default_rng(0)
    return ModelSet(global_model=_arrays(UNET, rng, 0.3), selector=_arrays(SELECTOR, rng, 0.3), selector_moments={},
                    personalized={client: _arrays(UNET, rng, 0.3) for client in LABELS})


def honest_reply(mode, models, client, seed, dice=0.5):
    """A plausible reply: small changes, its own metrics and steps."""
    rng = np.random.default_rng(seed)
    metrics = {GLOBAL_METRIC: dice, PERSONALIZED_METRIC: dice, SELECTOR_METRIC: 0.5, SELECTOR_CONFIDENCE: 0.5}
    reply = FedSMUpdate(round=models.next_round, label=LABELS[client], metrics=metrics, num_validation=5,
                        seconds={"validate": 1.0, "train": 2.0})
    if mode.clients_step_adam:
        selector = SelectorUpload(diff=_arrays(SELECTOR, rng, 1e-3), moments=_moments(rng, models.next_round + 1))
    else:
        selector = SelectorUpload(gradient=_arrays(SELECTOR, rng, 1.0))
    personalized = {name: value + _arrays({name: value.shape}, rng, 1e-2)[name]
                    for name, value in models.personalized[client].items()}
    reply.add_training(_arrays(UNET, rng, 1e-2), personalized, selector, STEPS[client])
    return reply


class Server:
    """Rounds of the real controller with the given workflow arguments and selector-training mode."""

    def __init__(self, tmp_path, mode="client_adam_on_server", **workflow_args):
        common_decomposers.register()
        self.mode = SELECTOR_TRAININGS[mode]
        self.controller = RecordingController(**workflow_args)
        self.controller.aggregator = FedSMAggregator(0.7)
        self.controller.persistor = FedSMModelPersistor()
        self.controller.mode = self.controller.mode = self.mode
        self.controller.train_config = TrainConfig.from_dict(
            {"dataset_base_dir": "/data", "datalist_json_path": "/data", "select_num_classes": len(LABELS),
             "selector_training": mode})
        self.app_root = tmp_path
        self.fl_ctx = FLContext()
        self.fl_ctx.set_prop(FLContextKey.APP_ROOT, str(tmp_path))

    def round(self, models, replies):
        """Send `replies` (client -> FedSMUpdate) through the result path; (next models, contributors)."""
        controller = self.controller
        controller._start_round(models, sorted(replies))
        controller._open_tasks(models.next_round)
        for client, reply in replies.items():
            client_task = ClientTask(Client(client, None), Task("train", Shareable()))
            client_task.result = fobs.loads(fobs.dumps(reply.to_shareable()))
            controller._on_result(client_task, self.fl_ctx)
        controller._round_open = False
        result = controller._close_round(models, self.fl_ctx)
        assert controller._finish_writes(self.fl_ctx)
        return result

    def honest_round(self, models, seed=0, **extra):
        replies = {c: honest_reply(self.mode, models, c, seed + i) for i, c in enumerate(HONEST)}
        return self.round(models, {**replies, **extra})

    def rejected(self, client):
        return [w for w in self.controller.warnings if w.startswith(f"update of {client} rejected")]


def warm_models(tmp_path, mode="client_adam_on_server"):
    """The models after one honest round, with the bounds' history of that round."""
    models, _ = Server(tmp_path / "warm", mode).honest_round(start_models(), seed=500)
    return models


def _flat(models):
    return {**{f"global/{k}": v for k, v in models.global_model.items()},
            **{f"selector/{k}": v for k, v in models.selector.items()},
            **{f"moments/{k}": v for k, v in models.selector_moments.items()},
            **{f"personalized/{c}/{k}": v for c, w in models.personalized.items() for k, v in w.items()}}


def assert_same_models(left, right):
    left, right = _flat(left), _flat(right)
    assert left.keys() == right.keys()
    for name in left:
        np.testing.assert_array_equal(left[name], right[name], err_msg=name)


def _scaled(reply, factor, parts=None):
    """The reply with every array of `parts` (default: all) multiplied by `factor`."""
    reply = copy.deepcopy(reply)
    for part, arrays in reply.parts.items():
        if parts is None or part in parts:
            reply.parts[part] = {name: (np.asarray(a) * factor).astype(np.float32) for name, a in arrays.items()}
    return reply


def test_a_clean_round_is_bitwise_the_same_with_the_bounds_on_and_off(tmp_path):
    for mode in sorted(SELECTOR_TRAININGS):
        on = Server(tmp_path / f"{mode}_on", mode)
        off = Server(tmp_path / f"{mode}_off", mode, max_norm_ratio=0, max_steps_ratio=0)
        models_on, models_off = start_models(), start_models()
        for seed in range(3):
            models_on, _ = on.honest_round(models_on, seed * 10)
            models_off, _ = off.honest_round(models_off, seed * 10)
        assert_same_models(models_on, models_off)
        assert not on.controller.warnings


def test_a_site_sending_huge_values_is_left_out_and_poisons_nothing(tmp_path):
    """A site that forgot to normalize: every value near 1e14, well-formed and under the range check."""
    server = Server(tmp_path)
    models = warm_models(tmp_path)
    evil = _scaled(honest_reply(server.mode, models, "evil", 99), 1e14 / 3)
    evil.parts["personalized"] = {k: np.full_like(v, 1e14) for k, v in evil.parts["personalized"].items()}
    with_evil, contributors = server.honest_round(models, evil=evil)
    without, _ = Server(tmp_path / "clean").honest_round(models)
    assert "evil" not in contributors and "norm" in server.rejected("evil")[0]
    assert_same_models(with_evil, without)
    unbounded, _ = Server(tmp_path / "off", max_norm_ratio=0).honest_round(models, evil=evil)
    assert np.abs(unbounded.personalized["a"]["conv.weight"]).max() > 1e12  # what the rule prevents


def test_in_a_fresh_run_first_round_a_huge_update_discards_the_round_then_is_held_out(tmp_path):
    """Before any history, updates are aggregated on arrival; one that fails the round's screen
    cannot be taken out again, so the round is discarded, and from then on such an update waits."""
    server = Server(tmp_path)
    models = start_models()
    evil = _scaled(honest_reply(server.mode, models, "evil", 99), 1e14 / 3)
    after_first, _ = server.honest_round(models, evil=evil)
    assert any("round 0 discarded" in w and "evil" in w for w in server.controller.warnings)
    assert after_first.next_round == 1 and after_first.norm_history
    assert_same_models(after_first, models)
    evil = _scaled(honest_reply(server.mode, after_first, "evil", 98), 1e14 / 3)
    after_second, contributors = server.honest_round(after_first, evil=evil)
    assert contributors == list(HONEST) and after_second.next_round == 2
    assert_same_models(after_second, Server(tmp_path / "clean").honest_round(after_first)[0])


def test_a_claim_of_a_million_steps_is_capped_by_the_others_claims(tmp_path):
    server = Server(tmp_path)
    models = warm_models(tmp_path)
    evil = honest_reply(server.mode, models, "evil", 99)
    evil.steps = 10**6
    next_models, contributors = server.honest_round(models, evil=evil)
    assert "evil" in contributors
    assert any(w.startswith("update of evil in round") and "weighted as 36" in w for w in server.controller.warnings)
    # the global step is the step-weighted mean with evil weighted 3 x the lower median claim (12)
    replies = {c: honest_reply(server.mode, models, c, i) for i, c in enumerate(HONEST)}
    weights = {**{c: STEPS[c] for c in HONEST}, "evil": 36}
    diffs = {**{c: r.global_diff for c, r in replies.items()}, "evil": evil.global_diff}
    expected = sum(weights[c] * diffs[c]["conv.bias"] for c in weights) / sum(weights.values())
    np.testing.assert_allclose(next_models.global_model["conv.bias"] - models.global_model["conv.bias"], expected,
                               rtol=1e-5, atol=1e-7)


def test_a_short_first_round_does_not_cap_a_site_forever(tmp_path):
    server = Server(tmp_path)
    models = start_models()
    short = honest_reply(server.mode, models, "evil", 99)
    short.steps = 1
    models, _ = server.honest_round(models, evil=short)
    server.controller.warnings.clear()
    models, contributors = server.honest_round(models, seed=50, evil=honest_reply(server.mode, models, "evil", 98))
    assert "evil" in contributors and not server.controller.warnings  # 12 steps, weighted 12


def test_a_gradient_a_million_times_the_others_is_left_out(tmp_path):
    server = Server(tmp_path)
    models = warm_models(tmp_path)
    evil = _scaled(honest_reply(server.mode, models, "evil", 99), 1e6, parts={"selector_gradient"})
    with_evil, contributors = server.honest_round(models, evil=evil)
    assert "evil" not in contributors and "selector update" in server.rejected("evil")[0]
    assert_same_models(with_evil, Server(tmp_path / "clean").honest_round(models)[0])
    unbounded, _ = Server(tmp_path / "off", max_norm_ratio=0).honest_round(models, evil=evil)
    honest_sq = with_evil.selector_moments["exp_avg_sq/fc.weight"].max()
    assert unbounded.selector_moments["exp_avg_sq/fc.weight"].max() > 1e6 * honest_sq  # Adam frozen for ages


def test_the_site_the_selector_still_gets_wrong_keeps_counting(tmp_path):
    """The VGG11 run of docs/generalization_gap.md: once the selector has learned two sites, their
    full-batch gradients fall (here 40x) while the third site's stays as large as every site's was in
    the first rounds. That site is 40 x the round's lower median, yet within the run's scale: it is
    aggregated on arrival every round, and no round is discarded."""
    server = Server(tmp_path)
    models = start_models()
    for seed in (0, 10):
        models, _ = server.honest_round(models, seed)
    for seed in (20, 30, 40):
        replies = {c: honest_reply(server.mode, models, c, seed + i) for i, c in enumerate(HONEST)}
        replies.update({c: _scaled(replies[c], 1 / 40, parts={"selector_gradient"}) for c in ("a", "b")})
        norms = {c: np.linalg.norm(np.concatenate([np.ravel(v) for v in r.parts["selector_gradient"].values()]))
                 for c, r in replies.items()}
        assert norms["c"] > 10 * sorted(norms.values())[1]  # what the round alone would reject
        models, contributors = server.round(models, replies)
        assert contributors == list(HONEST)
    assert not server.controller.warnings and models.next_round == 5
    references = [line for line in server.controller.infos if line.startswith("round 4 norm references")]
    assert len(references) == 1 and "selector update" in references[0] and "(the run's scale)" in references[0]


def test_client_adam_moments_far_off_the_others_are_left_out(tmp_path):
    server = Server(tmp_path, "client_adam")
    models = warm_models(tmp_path, "client_adam")
    evil = honest_reply(server.mode, models, "evil", 99)
    evil.parts["selector_moments"] = {key: (np.full_like(v, 1e6) if key.startswith("exp_avg/") else
                                            np.zeros_like(v) if key.startswith("exp_avg_sq/") else v)
                                      for key, v in evil.parts["selector_moments"].items()}
    with_evil, contributors = server.honest_round(models, evil=evil)
    assert "evil" not in contributors and "exp_avg norm" in server.rejected("evil")[0]
    assert_same_models(with_evil, Server(tmp_path / "clean", "client_adam").honest_round(models)[0])


def test_client_adam_moments_must_be_complete(tmp_path, caplog):
    server = Server(tmp_path, "client_adam")
    models = start_models()
    replies = {c: honest_reply(server.mode, models, c, i) for i, c in enumerate(("a", "evil"))}
    replies["evil"].parts["selector_moments"] = {key: v for key, v in replies["evil"].parts["selector_moments"].items()
                                                 if not key.startswith("exp_avg_sq/")}
    next_models, contributors = server.round(models, replies)
    assert contributors == ["a"] and "moments: incomplete" in caplog.text  # the aggregator's log
    assert server.controller.panics  # one valid update is fewer than min_clients 2: the run stops, nothing saved
    assert next_models is None


def test_an_empty_update_is_no_contributor(tmp_path):
    server = Server(tmp_path)
    models = start_models()
    empty = honest_reply(server.mode, models, "evil", 99)
    empty.parts = {part: {} for part in empty.parts}
    empty.steps = 10**6
    next_models, contributors = server.round(models, {"a": honest_reply(server.mode, models, "a", 0), "evil": empty})
    assert contributors == ["a"] and "no effective content" in server.rejected("evil")[0]
    assert next_models is None and "fewer than min_clients=2" in server.controller.panics[0]


def test_metrics_of_a_rejected_update_do_not_count(tmp_path):
    server = Server(tmp_path)
    models = start_models()
    evil = honest_reply(server.mode, models, "evil", 99, dice=1.0)
    evil.parts["global"] = {k: np.full_like(v, np.nan) for k, v in evil.parts["global"].items()}
    next_models, contributors = server.honest_round(models, evil=evil)
    assert "evil" not in contributors
    assert "personalized/evil" not in next_models.best_metrics
    assert not (tmp_path / best_checkpoint_name("personalized", "evil")).exists()


def test_one_site_perfect_score_with_a_huge_validation_size_does_not_pin_the_best_models(tmp_path):
    server = Server(tmp_path)
    models = start_models()
    for round_number, (honest_dice, evil_dice) in enumerate([(0.5, 1.0), (0.6, 0.0)]):
        evil = honest_reply(server.mode, models, "evil", 99 + round_number, dice=evil_dice)
        evil.num_validation = 2**31 - 1
        replies = {c: honest_reply(server.mode, models, c, 10 * round_number + i, dice=honest_dice)
                   for i, c in enumerate(HONEST)}
        models, _ = server.round(models, {**replies, "evil": evil})
    best = load_checkpoint(tmp_path / best_checkpoint_name("global", None))
    assert best["round"] == 1 and best["metric"] == pytest.approx(0.6)
