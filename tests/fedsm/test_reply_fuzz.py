"""Fuzzing the server's reply path: a malformed reply is rejected, the server survives, and the next
models are finite and bitwise those of the round without that client.

The path is the workflow's (`FedSMController._on_result`): `FedSMUpdate.from_shareable` (a
`MessageError` is a rejection), then `FedSMAggregator.accept` (False is a rejection), then
`aggregate()`, with a real `FLContext`. Three honest clients and one attacker send replies through
NVFlare's serialization (`fobs`); the attacker's reply is an honest reply mutated at random
(`reply_mutations`), for every selector-training mode. A mutation that cannot travel through `fobs`
(object arrays, tuple keys, 100k pieces) is handed to the server as built, as a server-side result
filter could.

`REPROS` keeps the minimal reply of every problem this fuzzing found (and that was then fixed) as a
regression test.
"""

import copy
import traceback

import numpy as np
import pytest
import torch
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.decomposers import common_decomposers
from nvflare.fuel.utils import fobs

from fedsm.core.adam_moments import STEP_KEY, moment_key
from fedsm.core.model_set import ModelSet
from fedsm.core.selector_update import SelectorUpload
from fedsm.core.update_checks import shapes_of
from fedsm.flare.aggregator import FedSMAggregator
from fedsm.flare.dxo_codec import MessageError
from fedsm.flare.messages import FedSMUpdate, update_shapes
from fedsm.selector_training import SELECTOR_TRAININGS
from fedsm.tags import METRIC_TAGS

import reply_mutations as m

CASES_PER_MODE = 220
PIECE_BYTES = 24  # conv.weight (48 B) travels in 2 pieces, fc.weight and its moments (60 B) in 3
UNET = {"conv.weight": (4, 3), "conv.bias": (3,)}
SELECTOR = {"fc.weight": (3, 5), "fc.bias": (3,)}
LABELS = {"client_a": 0, "client_b": 1, "attacker": 2, "client_c": 3}
ORDER = ["client_a", "client_b", "attacker", "client_c"]  # the attacker in the middle of the stream
STEPS = {"client_a": 3, "client_b": 5, "attacker": 4, "client_c": 7}
ROUND, LAMBDA, LR = 3, 0.7, 1e-3



def _arrays(shapes, rng, positive=False):
    arrays = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
    return {name: np.abs(array) for name, array in arrays.items()} if positive else arrays


def _moments(rng, step):
    moments = {}
    for name, shape in SELECTOR.items():
        moments[moment_key("exp_avg", name)] = rng.standard_normal(shape).astype(np.float32) * 0.1
        moments[moment_key("exp_avg_sq", name)] = np.abs(rng.standard_normal(shape)).astype(np.float32) * 0.01
    moments[STEP_KEY] = np.asarray(step, dtype=np.float32)
    return moments


def _current() -> ModelSet:
    rng = np.random.default_rng(1)
    return ModelSet(global_model=_arrays(UNET, rng), selector=_arrays(SELECTOR, rng), selector_moments=_moments(rng, 3),
                    personalized={client: _arrays(UNET, rng) for client in LABELS}, next_round=ROUND,
                    best_metrics={"global": 0.5})


def _reply(mode, client, seed) -> bytes:
    rng = np.random.default_rng(seed)
    update = FedSMUpdate(round=ROUND, label=LABELS[client], metrics={tag: 0.5 for tag in METRIC_TAGS},
                         num_validation=5, seconds={"validate": 1.5, "train": 20.0, "busy_from": 1.7e9,
                                                    "busy_until": 1.7e9 + 30}, memory={"rss": 2**30, "peak": 2**31})
    if mode.clients_step_adam:
        selector = SelectorUpload(diff=_arrays(SELECTOR, rng), moments=_moments(rng, 4))
    else:
        selector = SelectorUpload(gradient=_arrays(SELECTOR, rng))
    update.add_training(_arrays(UNET, rng), _arrays(UNET, rng), selector, STEPS[client])
    return fobs.dumps(update.to_shareable(PIECE_BYTES))


def _flat(models: ModelSet) -> dict:
    arrays = {**{f"global/{k}": v for k, v in models.global_model.items()},
              **{f"selector/{k}": v for k, v in models.selector.items()},
              **{f"moments/{k}": v for k, v in models.selector_moments.items()},
              **{f"personalized/{c}/{k}": v for c, w in models.personalized.items() for k, v in w.items()}}
    return {name: np.asarray(value) for name, value in arrays.items()}


def _fingerprint(models: ModelSet) -> dict:
    return {"arrays": {name: (a.dtype.str, a.shape, a.tobytes()) for name, a in _flat(models).items()},
            "round": models.next_round, "best": dict(models.best_metrics)}


def _nonfinite(models: ModelSet) -> list[str]:
    return [name for name, a in _flat(models).items()
            if not (np.issubdtype(a.dtype, np.floating) and np.isfinite(a).all())]


class Server:
    """The honest replies of one mode, the template models, and one round with or without an attacker."""

    def __init__(self, mode_name: str):
        common_decomposers.register()
        self.mode = SELECTOR_TRAININGS[mode_name]
        self.template = _current()
        self.template_print = _fingerprint(self.template)
        self.honest = {client: _reply(self.mode, client, seed) for seed, client in enumerate(ORDER)}
        self.shapes = update_shapes(shapes_of(self.template.global_model), self.mode.upload_shapes(self.template.selector))
        self.fl_ctx = FLContext()
        outcome, models, self.error = self.round(None)
        assert self.error is None and outcome == "absent"
        assert not _nonfinite(models)
        self.baseline = _fingerprint(models)

    def round(self, attacker_reply):
        """(attacker outcome, next models, error text of an exception that escaped, or None)."""
        current = copy.deepcopy(self.template)
        aggregator = FedSMAggregator(LAMBDA)
        aggregator.start_round(current, LABELS, self.mode, LR)
        outcome, error = "absent", None
        for client in ORDER:
            if client != "attacker":
                update = FedSMUpdate.from_shareable(fobs.loads(self.honest[client]), self.shapes, ROUND)
                assert aggregator.accept(client, update, update.steps, self.fl_ctx), client
            elif attacker_reply is not None:
                try:
                    outcome = self._attack(aggregator, attacker_reply)
                except Exception:  # a finding; NVFlare would log it and mark the task failed, so go on
                    outcome, error = "raised", traceback.format_exc(limit=-4)
        models = aggregator.aggregate(self.fl_ctx)
        if _fingerprint(current) != self.template_print:
            error = (error or "") + "the round modified the server's current model set"
        return outcome, models, error

    def _attack(self, aggregator, reply) -> str:
        try:
            update = FedSMUpdate.from_shareable(reply, self.shapes, ROUND)
        except MessageError:
            return "rejected by decoder"
        accepted = aggregator.accept("attacker", update, update.steps, self.fl_ctx)
        assert accepted == ("attacker" in aggregator.contributors)
        return "accepted" if accepted else "rejected by aggregator"


def _wire(shareable):
    return fobs.loads(fobs.dumps(shareable))


def _attacker_reply(server: Server, seed: int):
    """A mutated honest reply of the attacker (its values drawn from `seed`), as the server receives it."""
    rng = np.random.default_rng(seed)
    case = m.Case(fobs.loads(_reply(server.mode, "attacker", 1000 + seed)), rng, ROUND,
                  [label for client, label in LABELS.items() if client != "attacker"])
    done = m.mutate(case, count=int(rng.choice([1, 1, 1, 2, 2, 3])))
    reply = case.s
    if not case.direct:
        try:
            reply = _wire(case.s)
        except Exception:  # not serializable by fobs (or not deserializable): feed it as built
            case.direct = True
    return reply, done, case.direct


def _check(server: Server, seed: int) -> dict | None:
    """Run one case; None for a no-op, else what happened and every violation."""
    reply, done, direct = _attacker_reply(server, seed)
    if not done:
        return None
    expect = m.expectation(done)
    outcome, models, error = server.round(reply)
    violations = [("crash", error)] if error else []
    accepted = outcome == "accepted"
    bad = _nonfinite(models)
    if bad:
        violations.append(("nonfinite", f"non-finite after the round: {bad[:4]}"))
    if accepted and expect == m.REJECT:
        violations.append(("accepted_malformed", "accepted"))
    if not accepted and outcome != "raised" and expect == m.ACCEPT:
        violations.append(("rejected_legal", outcome))
    if not accepted and _fingerprint(models) != server.baseline:
        violations.append(("not_left_out", "models differ from the round without the attacker"))
    return {"seed": seed, "done": done, "direct": direct, "expect": expect, "outcome": outcome,
            "violations": violations}


@pytest.fixture(scope="module", params=sorted(SELECTOR_TRAININGS))
def server(request):
    torch.set_num_threads(1)
    return Server(request.param)


def test_malformed_replies_are_left_out(server):
    first = 10_000 * sorted(SELECTOR_TRAININGS).index(server.mode.name)  # other cases in every mode
    results = [r for r in (_check(server, seed) for seed in range(first, first + CASES_PER_MODE)) if r is not None]
    rejected = [r for r in results if r["outcome"] != "accepted"]
    assert len(results) >= 200 and len(rejected) >= 150, (len(results), len(rejected))
    violations = [(category, text, r) for r in results for category, text in r["violations"]]
    assert not violations, "\n\n".join(
        f"[{server.mode.name} seed {r['seed']}] {category}: {r['done']} expect {r['expect']}, "
        f"{r['outcome']}{' (fed directly)' if r['direct'] else ''}\n{text}" for category, text, r in violations[:12])


def test_honest_round_is_reproducible(server):
    """The comparison baseline itself: the same honest replies give bitwise the same models."""
    outcome, models, error = server.round(None)
    assert error is None and _fingerprint(models) == server.baseline


def _set(part, key, index, value):
    def mutate(case):
        array = m._numpy(case.parts[part].data[key])
        array.reshape(-1)[index] = value
        case.parts[part].data[key] = torch.from_numpy(array)
    return mutate


def _rename_pieces(part, name, count, index_text):
    def mutate(case):
        data = case.parts[part].data
        for index in range(count):
            data[f"{name}#{index_text(index)}"] = data.pop(f"{name}#{index}")
    return mutate


def _meta(key, value, sub=None):
    def mutate(case):
        meta = case.collection["meta"]
        if sub is None:
            meta[key] = value
        else:
            meta[key] = {**meta[key], sub: value}
    return mutate


def _part_meta(part, key, value):
    def mutate(case):
        if key is None:
            case.parts[part].meta = value
        else:
            case.parts[part].meta[key] = value
    return mutate


def _add_piece(part, name, index_text):
    def mutate(case):
        case.parts[part].data[f"{name}#{index_text}"] = torch.zeros(1)
    return mutate


# (id, mode, mutation, fed directly, must be rejected): the minimal reply of each problem found
REPROS = [
    ("piece_leading_zero", "server_adam", _rename_pieces("global", "conv.weight", 2, lambda i: f"0{i}"), False, True),
    ("piece_unicode_digit", "server_adam", _rename_pieces("global", "conv.weight", 2, lambda i: chr(0x660 + i)),
     False, True),
    ("piece_trailing_newline", "server_adam", _rename_pieces("global", "conv.weight", 2, lambda i: f"{i}\n"),
     False, True),
    ("piece_index_5000_digits", "server_adam", _add_piece("global", "conv.weight", "9" * m.BIG_DIGITS), False, True),
    ("numeric_filter_history", "server_adam", _part_meta("global", "filter_history", 5), False, False),
    ("global_meta_not_dict", "server_adam", _part_meta("global", None, [1, 2]), True, True),
    ("steps_10e400", "server_adam", _part_meta("global", "NUM_STEPS_CURRENT_ROUND", m.BIG_INT), True, True),
    ("metric_10e400", "server_adam", lambda case: case.parts["metrics"].data.update(val_metric_global_model=m.BIG_INT),
     True, True),
    ("seconds_10e400", "server_adam", _meta("fedsm_seconds", m.BIG_INT, "train"), True, True),
    ("seconds_1e300", "server_adam", _meta("fedsm_seconds", 1e300, "train"), False, True),
    ("oversize_global_diff", "server_adam", _set("global", "conv.bias", 0, 3.4028235e38), False, True),
    ("oversize_selector_diff", "client_adam", _set("selector", "fc.bias", 0, 1e38), False, True),
    ("large_gradient", "client_adam_on_server", _set("selector_gradient", "fc.bias", 0, 1e20), False, False),
    ("large_gradient", "server_adam", _set("selector_gradient", "fc.bias", 0, 1e20), False, False),
    ("negative_adam_step", "client_adam", lambda case: case.parts["selector_moments"].data.update(
        step=torch.tensor(-1.0)), False, True),
    ("other_round", "server_adam", _meta("current_round", ROUND + 1), False, True),
]


@pytest.mark.parametrize("mode,mutation,direct,must_reject", [pytest.param(*r[1:], id=f"{r[0]}-{r[1]}") for r in REPROS])
def test_former_findings_stay_fixed(mode, mutation, direct, must_reject):
    """The server neither raises nor takes the reply (or, for a legal but odd one, keeps the models finite)."""
    server = Server(mode)
    case = m.Case(fobs.loads(_reply(server.mode, "attacker", 7)), np.random.default_rng(0), ROUND, [])
    mutation(case)
    reply = case.s if direct else _wire(case.s)
    outcome, models, error = server.round(reply)
    assert error is None, error
    assert not _nonfinite(models)
    if must_reject:
        assert outcome != "accepted" and _fingerprint(models) == server.baseline
