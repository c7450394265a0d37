"""The FedSM message contract: every part is a DXO, large arrays travel in row pieces and arrive whole,
and a reply is checked completely on decoding, also after NVFlare's stock filters."""

import gc
import weakref

import numpy as np
import pytest
import torch
from nvflare.apis.dxo import DXO, DataKind, MetaKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.decomposers import common_decomposers
from nvflare.app_common.filters import ExcludeVars, PercentilePrivacy
from nvflare.app_opt.pt.quantization.dequantizer import ModelDequantizer
from nvflare.app_opt.pt.quantization.quantizer import ModelQuantizer
from nvflare.fuel.utils import fobs

from fedsm.core.selector_update import SelectorUpload, expected_moment_shapes
from fedsm.flare.dxo_codec import MessageError, split_into_pieces, wire_bytes
from fedsm.flare.messages import (CONTENT_KEY, LABEL_KEY, MAX_BYTES, MEMORY_KEY, NUM_VALIDATION_KEY, SECONDS_KEY,
                                  FedSMTask, FedSMUpdate, update_shapes)
from fedsm.tags import GLOBAL_METRIC, METRIC_TAGS

KIB = 1024
PIECE = 16 * KIB  # fc.weight (117 KiB) travels in 8 pieces
ROUND, STEPS = 3, 7


def _arrays(shapes, seed, positive=False):
    rng = np.random.default_rng(seed)
    arrays = {name: rng.standard_normal(shape, dtype=np.float32) for name, shape in shapes.items()}
    return {name: np.abs(array) for name, array in arrays.items()} if positive else arrays


UNET = {"conv.weight": (4, 3), "conv.bias": (3,)}
SELECTOR = {"fc.weight": (300, 100), "fc.bias": (300,)}
MOMENTS = expected_moment_shapes(_arrays(SELECTOR, 0))
UPLOADS = {"client_adam": {"diff": SELECTOR, "moments": MOMENTS}, "server_adam": {"gradient": SELECTOR}}


def _upload(mode):
    return SelectorUpload(**{field: _arrays(shapes, seed, positive=field == "moments")
                             for seed, (field, shapes) in enumerate(UPLOADS[mode].items())})


def _update(mode="client_adam"):
    update = FedSMUpdate(round=ROUND, label=1, metrics={tag: 0.25 for tag in METRIC_TAGS}, num_validation=5,
                         seconds={"validate": 1.5, "train": 20.0})
    update.add_training(_arrays(UNET, 10), _arrays(UNET, 11), _upload(mode), STEPS)
    return update


def _shapes(mode="client_adam"):
    return update_shapes(UNET, UPLOADS[mode])


def _task(moments=None):
    return FedSMTask(round=ROUND, num_rounds=9, label=2, num_clients=3, global_model=_arrays(UNET, 1),
                     personalized=_arrays(UNET, 2), selector=_arrays(SELECTOR, 3), selector_moments=moments)


def _task_shapes():
    return {"global": UNET, "personalized": UNET, "selector": SELECTOR, "selector_moments": MOMENTS}


def _over_the_wire(shareable: Shareable) -> Shareable:
    common_decomposers.register()  # as NVFlare does at start-up; fedsm.flare.messages registers tensors
    return fobs.loads(fobs.dumps(shareable))


def _parts(shareable: Shareable) -> dict:
    return shareable["DXO"]["data"]


def _filter(shareable: Shareable, *filters) -> Shareable:
    for stock_filter in filters:
        shareable = stock_filter.process(shareable, FLContext())
    return shareable


def _assert_same(received, sent):
    assert sorted(received) == sorted(sent)
    for name, array in sent.items():
        np.testing.assert_array_equal(received[name], array)
        assert received[name].dtype == np.float32


def test_split_makes_row_views_of_large_arrays_only():
    weights = {**_arrays(SELECTOR, 0), "step": np.asarray(3.0, np.float32)}
    pieces = split_into_pieces(weights, piece_bytes=PIECE)
    assert pieces["fc.bias"] is weights["fc.bias"] and pieces["step"] is weights["step"]
    assert sorted(pieces) == sorted(["fc.bias", "step", *(f"fc.weight#{i}" for i in range(8))])
    rows = [pieces[f"fc.weight#{i}"] for i in range(8)]
    assert all(np.shares_memory(row, weights["fc.weight"]) and row.nbytes <= PIECE for row in rows)
    np.testing.assert_array_equal(np.concatenate(rows), weights["fc.weight"])
    # never more pieces than rows, and a non-contiguous array travels as a contiguous copy
    wide = split_into_pieces({"wide": np.ones((2, 40 * KIB), np.float32)[:, ::2]}, piece_bytes=PIECE)
    assert sorted(wide) == ["wide#0", "wide#1"] and all(piece.flags.c_contiguous for piece in wide.values())


@pytest.mark.parametrize("moments", [None, {}, _arrays(MOMENTS, 4, positive=True)])
def test_task_joins_back_exactly_through_nvflare_serialization(moments):
    """Round 0 sends empty moments, and modes where the server steps Adam send none."""
    task = _task(moments)
    received = FedSMTask.from_shareable(_over_the_wire(task.to_shareable(piece_bytes=PIECE)), _task_shapes())
    assert (received.round, received.num_rounds, received.label, received.num_clients) == (ROUND, 9, 2, 3)
    for field in ("global_model", "personalized", "selector"):
        _assert_same(getattr(received, field), getattr(task, field))
    if moments is None:
        assert received.selector_moments is None
    else:
        _assert_same(received.selector_moments, moments)


def test_decoding_takes_the_pieces_out_of_the_received_message():
    """NVFlare keeps a task message until the task ends (a result until its callback returns), so the
    pieces must leave it as they are joined; else a receiver holds every split array twice."""
    message = _over_the_wire(_task(_arrays(MOMENTS, 4, positive=True)).to_shareable(piece_bytes=PIECE))
    pieces = {(part, key): weakref.ref(value) for part, dxo in _parts(message).items()
              for key, value in dxo.data.items() if "#" in key}
    assert {part for part, _ in pieces} == {"selector", "selector_moments"}
    received = FedSMTask.from_shareable(message, _task_shapes())
    assert not [key for dxo in _parts(message).values() for key in dxo.data if "#" in key]
    gc.collect()
    assert [key for key, ref in pieces.items() if ref() is not None] == []
    assert sorted(_parts(message)["selector"].data) == ["fc.bias"]  # whole arrays stay: they are not copied
    _assert_same(received.selector, _task().selector)


def test_task_lacking_an_array_is_rejected():
    shareable = _task().to_shareable(piece_bytes=PIECE)
    del _parts(shareable)["selector"].data["fc.bias"]
    with pytest.raises(MessageError, match=r"part 'selector' lacks \['fc.bias'\]"):
        FedSMTask.from_shareable(shareable, _task_shapes())


@pytest.mark.parametrize("mode", list(UPLOADS))
def test_update_joins_back_exactly_through_nvflare_serialization(mode):
    update = _update(mode)
    received = FedSMUpdate.from_shareable(_over_the_wire(update.to_shareable(piece_bytes=PIECE)), _shapes(mode))
    assert (received.round, received.label, received.num_validation, received.steps) == (ROUND, 1, 5, STEPS)
    assert received.metrics == update.metrics and received.seconds == update.seconds
    assert sorted(received.parts) == sorted(update.parts)
    for name, weights in update.parts.items():
        _assert_same(received.parts[name], weights)
    for field, value in vars(received.selector).items():
        assert (value is None) == (field not in UPLOADS[mode])


@pytest.mark.parametrize("mode, kinds", [
    ("client_adam", {"global": DataKind.WEIGHT_DIFF, "personalized": DataKind.WEIGHTS,
                     "selector": DataKind.WEIGHT_DIFF, "selector_moments": DataKind.APP_DEFINED}),
    ("server_adam", {"global": DataKind.WEIGHT_DIFF, "personalized": DataKind.WEIGHTS,
                     "selector_gradient": DataKind.WEIGHT_DIFF}),
])
def test_every_update_part_is_a_dxo_with_nvflare_kind_and_meta(mode, kinds):
    collection = _over_the_wire(_update(mode).to_shareable(piece_bytes=PIECE))["DXO"]
    assert collection["kind"] == DataKind.COLLECTION and collection["meta"][AppConstants.CURRENT_ROUND] == ROUND
    parts = collection["data"]
    assert sorted(parts) == sorted([*kinds, "metrics"])
    for name, kind in {**kinds, "metrics": DataKind.METRICS}.items():
        assert isinstance(parts[name], DXO) and parts[name].data_kind == kind, name
        assert parts[name].get_meta_prop(AppConstants.CURRENT_ROUND) == ROUND, name
    assert parts["global"].get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND) == STEPS
    for name, content in {"selector_moments": "adam_moments", "selector_gradient": "full_batch_gradient"}.items():
        assert name not in parts or parts[name].get_meta_prop(CONTENT_KEY) == content


def test_task_parts_are_weights_and_moments_app_defined():
    shareable = _task(_arrays(MOMENTS, 4)).to_shareable()
    assert shareable["DXO"]["meta"][AppConstants.NUM_ROUNDS] == 9
    parts = _parts(shareable)
    assert {name: part.data_kind for name, part in parts.items()} == {
        "global": DataKind.WEIGHTS, "personalized": DataKind.WEIGHTS, "selector": DataKind.WEIGHTS,
        "selector_moments": DataKind.APP_DEFINED}
    assert all(part.get_meta_prop(AppConstants.CURRENT_ROUND) == ROUND for part in parts.values())


def test_updates_spooled_to_disk_are_read_back_and_measured_from_their_file(tmp_path):
    """With the server's update spool on, NVFlare hands over references to tensors on disk."""
    from nvflare.app_opt.pt.lazy_tensor_dict import LazyTensorDict
    from safetensors.torch import save_file

    update = _update()
    shareable = update.to_shareable(piece_bytes=PIECE)
    in_memory = wire_bytes(shareable)
    part = _parts(shareable)["selector"]
    path = str(tmp_path / "update.safetensors")
    save_file({key: tensor.contiguous() for key, tensor in part.data.items()}, path)
    spooled = LazyTensorDict({key: (path, key) for key in part.data}, str(tmp_path))
    part.data = {key: spooled.make_lazy_ref(key) for key in part.data}
    assert wire_bytes(shareable) == in_memory
    _assert_same(FedSMUpdate.from_shareable(shareable, _shapes()).parts["selector"], update.parts["selector"])


def _set(part, name, value):
    return lambda parts, meta: parts[part].data.__setitem__(name, value)


def _pop(part, name):
    return lambda parts, meta: parts[part].data.pop(name)


def _set_meta(key, value):
    return lambda parts, meta: meta.__setitem__(key, value)


def _replace_with_pieces(part, name, count):
    def mutate(parts, meta):
        whole = parts[part].data.pop(name)
        parts[part].data.update({f"{name}#{i}": piece for i, piece in enumerate(torch.tensor_split(whole, count))})
    return mutate


@pytest.mark.parametrize("mutate, message", [
    (lambda parts, meta: parts.pop("selector"), r"part 'selector' is missing"),
    (lambda parts, meta: setattr(parts["personalized"], "data_kind", DataKind.WEIGHT_DIFF),
     r"part 'personalized' has data kind \S*WEIGHT_DIFF, expected \S*WEIGHTS$"),
    (lambda parts, meta: parts.__setitem__("selector_gradient", parts["selector"]), r"unexpected parts"),
    (_set("global", "fc.bias", torch.zeros(3)), r"part 'global' holds an unexpected array 'fc.bias'"),
    (_set("global", "conv.weight", torch.zeros(3, 4)), r"'conv.weight' has shape \(3, 4\), expected \(4, 3\)"),
    (_set("global", "conv.bias", torch.zeros(3, dtype=torch.float16)), r"'conv.bias' has dtype float16"),
    (_set("selector_moments", "step", torch.tensor(3)), r"part 'selector_moments': 'step' has dtype int64"),
    (_pop("selector", "fc.weight#5"), r"pieces of 'fc.weight' are .* not 0..n-1"),
    (_pop("selector", "fc.weight#7"), r"pieces of 'fc.weight' hold \d+ of its 300 rows"),
    (_replace_with_pieces("global", "conv.bias", 4), r"pieces of 'conv.bias' .* within its 3 rows"),
    (_set("selector", "fc.bias#0", torch.zeros(300)), r"'fc.bias' both whole and in pieces"),
    (_set("metrics", GLOBAL_METRIC, 1.5), rf"metric '{GLOBAL_METRIC}' must be a number in \[0, 1\]"),
    (_pop("metrics", GLOBAL_METRIC), r"metrics must hold exactly"),
    (lambda parts, meta: parts.pop("metrics"), r"no METRICS part"),
    (_set_meta(SECONDS_KEY, {"validate": "1.5"}), rf"'{SECONDS_KEY}.validate' must be a number in"),
    (_set_meta(SECONDS_KEY, {"sleep": 1.0}), rf"'{SECONDS_KEY}' must map some of"),
    (_set_meta(MEMORY_KEY, {"rss": 1, "gpu_peak": "1"}), rf"'{MEMORY_KEY}' must map some of"),
    (_set_meta(MEMORY_KEY, {"gpu_peak": 1.5}), rf"'{MEMORY_KEY}' must map some of"),
    (_set_meta(MEMORY_KEY, {"gpu_peak": True}), rf"'{MEMORY_KEY}' must map some of"),
    (_set_meta(MEMORY_KEY, {"gpu_peak": -1}), rf"'{MEMORY_KEY}' must map some of"),
    (_set_meta(MEMORY_KEY, {"gpu_peak": MAX_BYTES}), rf"'{MEMORY_KEY}' must map some of"),
    (_set_meta(MEMORY_KEY, {"gpu": 1}), rf"'{MEMORY_KEY}' must map some of"),
    (_set_meta(LABEL_KEY, True), rf"'{LABEL_KEY}' must be an integer"),
    (_set_meta(NUM_VALIDATION_KEY, -1), rf"'{NUM_VALIDATION_KEY}' must be an integer in"),
    (_set_meta(AppConstants.CURRENT_ROUND, 2.0), rf"'{AppConstants.CURRENT_ROUND}' must be an integer"),
])
def test_a_reply_breaking_the_contract_is_rejected_naming_part_and_array(mutate, message):
    shareable = _update().to_shareable(piece_bytes=PIECE)
    mutate(_parts(shareable), shareable["DXO"]["meta"])
    with pytest.raises(MessageError, match=message):
        FedSMUpdate.from_shareable(shareable, _shapes())


@pytest.mark.parametrize("memory", [{}, {"rss": 2**30, "peak": 2**31},
                                    {"rss": 2**30, "peak": 2**31, "gpu_peak": 40 * 2**30}, {"gpu_peak": 0}])
def test_memory_meta_with_or_without_the_gpu_peak_arrives_as_sent(memory):
    update = _update()
    update.memory = memory
    received = FedSMUpdate.from_shareable(_over_the_wire(update.to_shareable(piece_bytes=PIECE)), _shapes())
    assert received.memory == memory


def test_a_message_that_is_no_fedsm_collection_is_rejected():
    with pytest.raises(MessageError, match="not a DXO message"):
        FedSMUpdate.from_shareable(Shareable(), _shapes())
    with pytest.raises(MessageError, match="COLLECTION"):
        FedSMUpdate.from_shareable(DXO(DataKind.WEIGHTS, {}).to_shareable(), _shapes())
    assert wire_bytes(Shareable()) == 0


def test_names_a_filter_removed_are_absent_from_the_decoded_part():
    shareable = _filter(_update().to_shareable(piece_bytes=PIECE), ExcludeVars(r"^fc\.weight"))
    received = FedSMUpdate.from_shareable(_over_the_wire(shareable), _shapes())
    assert sorted(received.parts["selector"]) == ["fc.bias"]
    assert received.filters["selector"] == ["ExcludeVars"] and received.filters["selector_moments"] == []
    assert sorted(received.parts["selector_moments"]) == sorted(MOMENTS)  # APP_DEFINED: not filtered


def test_an_update_survives_nvflare_stock_filters_on_client_and_server():
    update = _update()
    percentile = PercentilePrivacy(percentile=50, gamma=0.1, data_kinds=[DataKind.WEIGHT_DIFF])
    sent = _filter(update.to_shareable(piece_bytes=PIECE), ExcludeVars(r"^fc\.weight"), percentile,
                   ModelQuantizer("float16"))
    received = FedSMUpdate.from_shareable(_filter(_over_the_wire(sent), ModelDequantizer()), _shapes())
    assert received.steps == STEPS
    assert received.filters["global"][-3:] == ["PercentilePrivacy", "ModelQuantizer", "ModelDequantizer"]
    assert "PercentilePrivacy" not in received.filters["personalized"]
    diff = received.global_diff["conv.weight"]
    assert np.abs(update.global_diff["conv.weight"]).max() > 0.1 * STEPS + 1e-2  # so the clipping shows
    assert diff.dtype == np.float32 and (diff == 0).any() and np.abs(diff).max() <= 0.1 * STEPS + 1e-2
    np.testing.assert_allclose(received.personalized["conv.weight"], update.personalized["conv.weight"], rtol=1e-3)
    assert sorted(received.parts["selector"]) == ["fc.bias"]
    _assert_same(received.parts["selector_moments"], update.parts["selector_moments"])  # bit-exact


def test_float16_without_dequantizer_is_rejected_naming_the_filters():
    shareable = _filter(_update().to_shareable(piece_bytes=PIECE), ModelQuantizer("float16"))
    with pytest.raises(MessageError, match=r"dtype float16.*filters applied to it: \['ModelQuantizer'\]"):
        FedSMUpdate.from_shareable(shareable, _shapes())


def test_wire_bytes_halve_for_float16_weights_and_keep_app_defined_moments():
    update = _update()
    weights = sum(array.nbytes for name in ("global", "personalized", "selector")
                  for array in update.parts[name].values())
    moments = sum(array.nbytes for array in update.parts["selector_moments"].values())
    shareable = update.to_shareable(piece_bytes=PIECE)
    assert wire_bytes(shareable) == weights + moments
    assert wire_bytes(_filter(shareable, ModelQuantizer("float16"))) == weights // 2 + moments
