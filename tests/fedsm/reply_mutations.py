"""Random mutations of a FedSM training reply, each with what the server must do with it.

A mutation edits a Shareable as NVFlare delivers it (after `fobs.loads`) in place and returns
`(tag, detail, expect)`, or None where it does not apply. `expect` is REJECT (malformed: the server
must leave the reply out), ACCEPT (a legal reply: a filter removed names, a different piece layout,
other finite values) or EITHER (legal by type, odd in value: the server may take it, but the models
must stay finite). `tag` is stable (`mutation.variant`) so a finding can be named; `detail` says
which part and array. Mutations mark what they touch so that a later one in the same case never
undoes an earlier one (a removal after a NaN would make a rejected reply legal again).
"""

import functools
import math
import warnings

import numpy as np
import torch
from nvflare.apis.dxo import DXO, DataKind, MetaKey
from nvflare.app_common.app_constant import AppConstants

from fedsm.flare.dxo_codec import MAX_PARTS_NAMES
from fedsm.flare.messages import (GLOBAL, LABEL_KEY, MEMORY_KEY, METRICS, NUM_VALIDATION_KEY, SECONDS_KEY,
                                  SELECTOR_GRADIENT, SELECTOR_MOMENTS)
from fedsm.tags import METRIC_TAGS

REJECT, ACCEPT, EITHER = "reject", "accept", "either"
STRICTNESS = {ACCEPT: 0, EITHER: 1, REJECT: 2}
BIG_INT = 10**400  # beyond float: int-to-float conversions raise OverflowError
BIG_DIGITS = 5000  # more digits than int() converts (sys.get_int_max_str_digits, 4300)

WRONG_INTS = [None, "3", 3.0, -1, True, False, [3], {"n": 3}, math.nan, math.inf]
WRONG_SECONDS = [None, "1.5", -1.0, math.nan, math.inf, -math.inf, True, [1.5], {"s": 1}]
WRONG_METRICS = [-0.1, 1.5, math.inf, -math.inf, "0.5", None, True, [0.5], {"m": 0.5}, 1e308]
WRONG_STEPS = [None, "7", 7.0, -1, 0, True, False, [7], {"steps": 7}, math.nan, math.inf]
BAD_DTYPES_TORCH = [torch.int8, torch.int32, torch.int64, torch.uint8, torch.bool, torch.float16, torch.float64,
                    torch.bfloat16, torch.complex64]
BAD_DTYPES_NUMPY = [np.int32, np.int64, np.float16, np.float64, np.bool_, np.complex128, object]
NOT_ARRAYS = [None, 1.5, 7, "abc", b"raw", [1.0, 2.0], {"a": 1.0}]


class Case:
    """One attacker reply being mutated: the Shareable, the mode's expected part names, what is touched."""

    def __init__(self, shareable, rng: np.random.Generator, current_round: int, other_labels: list[int]):
        self.s, self.rng, self.round, self.other_labels = shareable, rng, current_round, other_labels
        self.touched: set = set()
        self.direct = False  # the mutation cannot travel through fobs; fed to the server as built

    def choice(self, items):
        return items[int(self.rng.integers(len(items)))]

    @property
    def collection(self):
        return self.s["DXO"]

    @property
    def parts(self) -> dict:
        return self.collection["data"]

    def weight_parts(self) -> list[str]:
        return sorted(name for name, dxo in self.parts.items()
                      if name != METRICS and isinstance(dxo, DXO) and isinstance(dxo.data, dict))

    def arrays(self, part: str, untouched: bool = False) -> list[str]:
        """Base names (pieces folded) of the arrays in a part."""
        names = sorted({key.split("#")[0] for key in self.parts[part].data if isinstance(key, str)})
        return [name for name in names if not untouched or (part, name) not in self.touched]

    def keys_of(self, part: str, name: str) -> list[str]:
        data = self.parts[part].data
        pieces = sorted((k for k in data if isinstance(k, str) and k.startswith(name + "#")),
                        key=lambda k: int(k.rsplit("#", 1)[1]))
        return pieces or [name]

    def pick_key(self, untouched: bool = False):
        """(part, base name, key) of a random array or piece, or None."""
        candidates = [(part, name) for part in self.weight_parts() for name in self.arrays(part, untouched)]
        if not candidates:
            return None
        part, name = self.choice(candidates)
        return part, name, self.choice(self.keys_of(part, name))

    def touch(self, *keys) -> None:
        self.touched.update(keys)


def _picking(pick, touch: bool):
    """A mutation of what `pick(case)` finds, `(part, name, ...)`: `edit(case, part, name, ...)`; marks it
    touched unless `touch` is False."""
    def wrap(edit):
        @functools.wraps(edit)
        def mutation(case):
            picked = pick(case)
            if picked is None:
                return None
            result = edit(case, *picked)
            if result is not None and touch:
                case.touch(picked[:2] if len(picked) > 1 else picked[0])
            return result
        return mutation
    return wrap


def on_array(untouched: bool = False, touch: bool = True):
    """A mutation of one random array or piece: `edit(case, part, name, key)`."""
    return _picking(lambda case: case.pick_key(untouched), touch)


def on_split(touch: bool = True):
    """A mutation of one random array sent in two or more pieces: `edit(case, part, name, piece keys)`."""
    return _picking(lambda case: _split(case), touch)


def _value(case, part, key):
    return case.parts[part].data[key]


def _numpy(value) -> np.ndarray:
    return value.detach().numpy().copy() if isinstance(value, torch.Tensor) else np.array(value)


def _set_element(case, value, tag, expect):
    @on_array()
    def edit(case, part, name, key):
        array = _numpy(_value(case, part, key))
        if array.size == 0 or array.dtype != np.float32:
            return None
        array.reshape(-1)[int(case.rng.integers(array.size))] = value
        case.parts[part].data[key] = torch.from_numpy(array)
        return tag, f"{part}/{key} element = {value}", expect
    return edit(case)


def nonfinite(case):
    value = case.choice([math.nan, math.inf, -math.inf])
    return _set_element(case, value, f"nonfinite.{value}", REJECT)


def oversize(case):
    value = case.choice([1e38, -1e38, 3.4028235e38, -3.4028235e38])
    return _set_element(case, value, f"oversize.{abs(value):g}", REJECT)


def large(case):
    """Finite, representable, far beyond any trained weight: may be taken, must not overflow anything."""
    value = case.choice([1e20, -1e20, 1e30])
    return _set_element(case, value, f"large.{abs(value):g}", EITHER)


@on_array()
def dtype(case, part, name, key):
    value = _value(case, part, key)
    if case.rng.random() < 0.5:
        target = case.choice(BAD_DTYPES_TORCH)
        with warnings.catch_warnings():  # complex to real after an earlier dtype change: still a bad dtype
            warnings.simplefilter("ignore")
            new = torch.as_tensor(_numpy(value)).to(target)
    else:
        target = case.choice(BAD_DTYPES_NUMPY)
        new = _numpy(value).astype(target)
    case.parts[part].data[key] = new
    return f"dtype.{getattr(target, '__name__', str(target))}", f"{part}/{key} as {target}", REJECT


@on_array(untouched=True, touch=False)
def numpy_float32(case, part, name, key):
    """A float32 NumPy array instead of a tensor: another legal transport of the same values."""
    case.parts[part].data[key] = _numpy(_value(case, part, key)).astype(np.float32)
    return "numpy_float32", f"{part}/{key}", ACCEPT


@on_array()
def not_array(case, part, name, key):
    value = case.choice(NOT_ARRAYS)
    case.parts[part].data[key] = value
    return f"not_array.{type(value).__name__}", f"{part}/{key} = {value!r}", REJECT


@on_array()
def shape(case, part, name, key):
    array = _numpy(_value(case, part, key))
    options = ["unsqueeze", "append_row"]
    if array.ndim >= 1 and array.shape[0] >= 1:
        options.append("drop_row")
    if array.ndim >= 2:
        options.append("flatten")
    if array.ndim == 2 and array.shape[0] != array.shape[1]:
        options.append("transpose")
    how = case.choice(options)
    new = {"unsqueeze": lambda: array[None],
           "append_row": lambda: np.concatenate([array.reshape(-1, *array.shape[1:]) if array.ndim else array[None],
                                                 np.zeros((1, *array.shape[1:]), np.float32)]),
           "drop_row": lambda: array[:-1], "flatten": lambda: array.reshape(-1), "transpose": lambda: array.T}[how]()
    case.parts[part].data[key] = torch.from_numpy(np.ascontiguousarray(new, dtype=np.float32))
    return f"shape.{how}", f"{part}/{key} {array.shape} -> {new.shape}", REJECT


@on_array(untouched=True)
def values(case, part, name, key):
    """Other finite values (zeros or noise) of the right dtype and shape: a legal update."""
    array = _numpy(_value(case, part, key))
    zeros = case.rng.random() < 0.3
    new = np.zeros_like(array) if zeros else case.rng.standard_normal(array.shape).astype(np.float32)
    if name.startswith("exp_avg_sq/") or name == "step":
        new = np.abs(new) + (name == "step")
    case.parts[part].data[key] = torch.from_numpy(np.array(new, dtype=np.float32))  # keeps 0-d arrays 0-d
    return f"values.{'zeros' if zeros else 'noise'}", f"{part}/{key}", ACCEPT


def negative_sq(case):
    if SELECTOR_MOMENTS not in case.weight_parts():
        return None
    names = [n for n in case.arrays(SELECTOR_MOMENTS) if n.startswith("exp_avg_sq/")]
    if not names:
        return None
    name = case.choice(names)
    key = case.choice(case.keys_of(SELECTOR_MOMENTS, name))
    array = _numpy(_value(case, SELECTOR_MOMENTS, key))
    array.reshape(-1)[0] = -abs(array.reshape(-1)[0]) - 1e-3
    case.parts[SELECTOR_MOMENTS].data[key] = torch.from_numpy(array)
    case.touch((SELECTOR_MOMENTS, name))
    return "negative_exp_avg_sq", f"{SELECTOR_MOMENTS}/{key}", REJECT


def adam_step(case):
    """The moments' step count: negative is malformed, odd but non-negative values may be taken."""
    if SELECTOR_MOMENTS not in case.weight_parts() or "step" not in case.parts[SELECTOR_MOMENTS].data:
        return None
    value = case.choice([-1.0, -1e6, 0.0, 2.5, 1e30])
    case.parts[SELECTOR_MOMENTS].data["step"] = torch.tensor(value, dtype=torch.float32)
    case.touch((SELECTOR_MOMENTS, "step"))
    return f"adam_step.{value:g}", f"{SELECTOR_MOMENTS}/step = {value}", REJECT if value < 0 else EITHER


def remove_name(case):
    """Drop an array (all its pieces): what a filter such as ExcludeVars does; legal."""
    part_names = [(p, n) for p in case.weight_parts() for n in case.arrays(p, untouched=True)]
    if not part_names:
        return None
    part, name = case.choice(part_names)
    for key in case.keys_of(part, name):
        del case.parts[part].data[key]
    case.touch((part, name))
    # moments must cover every parameter of the selector difference (a filter never removes them); the
    # difference may lose that parameter too in a later mutation, so either outcome is right
    return "remove_name", f"{part}/{name}", EITHER if part == SELECTOR_MOMENTS else ACCEPT


def _split(case):
    """(part, name, piece keys) of a random array sent in two or more pieces, or None."""
    split = [(p, n) for p in case.weight_parts() for n in case.arrays(p) if len(case.keys_of(p, n)) > 1]
    if not split:
        return None
    part, name = case.choice(split)
    return part, name, case.keys_of(part, name)


@on_split()
def remove_piece(case, part, name, keys):
    key = case.choice(keys)
    del case.parts[part].data[key]
    return "remove_piece", f"{part}/{key} of {len(keys)}", REJECT


def rename(case):
    picked = case.pick_key()
    if picked is None:
        return None
    part, name, key = picked
    new = case.choice([key + "x", "unknown.weight", "", " " + key, key.upper(), key.replace(".", "/")])
    if new == key:
        return None
    case.parts[part].data[new] = case.parts[part].data.pop(key)
    case.touch((part, name))
    return "rename", f"{part}/{key} -> {new!r}", REJECT


def extra_name(case):
    parts = case.weight_parts()
    if not parts:
        return None
    part = case.choice(parts)
    foreign = [n for p in parts if p != part for n in case.arrays(p) if n not in case.arrays(part)]
    name = case.choice(["extra.weight", *foreign[:3]])
    case.parts[part].data[name] = torch.zeros(3)
    case.touch((part, name))
    return "extra_name", f"{part}/{name}", REJECT


def huge_piece_index(case):
    """A piece `<name>#<huge>` next to the real ones (a gap, or both whole and in pieces)."""
    parts = case.weight_parts()
    if not parts or not case.arrays(parts[0]):
        return None
    part = case.choice([p for p in parts if case.arrays(p)] or parts)
    if not case.arrays(part):
        return None
    name = case.choice(case.arrays(part))
    index = case.choice(["1000000", str(2**63), str(10**30), "9" * BIG_DIGITS])
    case.parts[part].data[f"{name}#{index}"] = torch.zeros(1)
    case.touch((part, name))
    return f"huge_piece_index.{len(index)}_digits", f"{part}/{name}#<{len(index)} digits>", REJECT


@on_split()
def piece_index_format(case, part, name, keys):
    """Piece names that are not `<name>#<i>` as a sender writes them: leading zeros, non-ASCII digits,
    a trailing newline, signs, shifted indices."""
    how = case.choice(["leading_zero", "arabic_indic_digit", "trailing_newline", "sign", "shift"])
    data = case.parts[part].data
    pieces = {key: data.pop(key) for key in keys}
    for index, key in enumerate(keys):
        new_index = {"leading_zero": f"0{index}", "arabic_indic_digit": chr(0x0660 + index) if index < 10 else index,
                     "trailing_newline": f"{index}\n", "sign": f"+{index}", "shift": index + 1}[how]
        data[f"{name}#{new_index}"] = pieces[key]
    return f"piece_index_format.{how}", f"{part}/{name} in {len(keys)} pieces", REJECT


@on_split(touch=False)
def swap_pieces(case, part, name, keys):
    """Two pieces of one array exchanged (same shape): different values, legal layout."""
    first, second = keys[0], keys[-1]
    data = case.parts[part].data
    if tuple(data[first].shape) != tuple(data[second].shape):
        return None
    data[first], data[second] = data[second], data[first]
    return "swap_pieces", f"{part}/{name}", ACCEPT


def relayout(case):
    """The same values in another legal layout: whole, one piece `#0`, or one piece per row."""
    picked = case.pick_key(untouched=True)
    if picked is None:
        return None
    part, name, _ = picked
    data = case.parts[part].data
    keys = case.keys_of(part, name)
    whole = np.concatenate([_numpy(data[k]) for k in keys]) if len(keys) > 1 or keys[0] != name else \
        _numpy(data[name])
    if whole.ndim == 0:
        return None
    for key in keys:
        del data[key]
    how = case.choice(["whole", "one_piece", "row_pieces"])
    if how == "whole":
        data[name] = torch.from_numpy(whole)
    elif how == "one_piece":
        data[f"{name}#0"] = torch.from_numpy(whole)
    else:
        for row in range(len(whole)):
            data[f"{name}#{row}"] = torch.from_numpy(whole[row:row + 1].copy())
    case.touch((part, name))
    return f"relayout.{how}", f"{part}/{name}", ACCEPT


@on_split()
def empty_piece(case, part, name, keys):
    """A zero-row piece inserted among the pieces (indices still 0..n-1): no sender makes it."""
    data = case.parts[part].data
    pieces = [data.pop(key) for key in keys]
    pieces.insert(1, pieces[0][:0])
    for index, piece in enumerate(pieces):
        data[f"{name}#{index}"] = piece
    return "empty_piece", f"{part}/{name}", EITHER


def many_pieces(case):
    """A piece count far beyond the array's rows; over MAX_PARTS_NAMES it is fed directly (too slow
    to serialize)."""
    parts = case.weight_parts()
    if not parts:
        return None
    part = case.choice(parts)
    huge = case.rng.random() < 0.3
    count = MAX_PARTS_NAMES + 1 if huge else 1000
    name = case.choice(case.arrays(part) or ["conv.weight"])
    piece = np.zeros((0,), np.float32) if huge else torch.zeros(0)
    data = case.parts[part].data
    for key in case.keys_of(part, name) if name in case.arrays(part) else []:
        del data[key]
    for index in range(count):
        data[f"{name}#{index}"] = piece
    case.direct = case.direct or huge
    case.touch((part, name))
    return f"many_pieces.{count}", f"{part}/{name}", REJECT


def non_text_name(case):
    parts = case.weight_parts()
    if not parts:
        return None
    part = case.choice(parts)
    key = case.choice([7, 1.5, None, b"conv.bias", ("conv", "bias")])
    case.parts[part].data[key] = torch.zeros(3)
    case.touch((part, repr(key)))
    return f"non_text_name.{type(key).__name__}", f"{part}/{key!r}", REJECT


def _pick_part(case):
    names = [n for n, dxo in case.parts.items() if isinstance(dxo, DXO)]
    return (("part", case.choice(names)),) if names else None


@_picking(_pick_part, touch=True)
def part_kind(case, touched):
    name = touched[1]
    old = case.parts[name].data_kind
    new = case.choice([k for k in (DataKind.WEIGHTS, DataKind.WEIGHT_DIFF, DataKind.APP_DEFINED, DataKind.METRICS,
                                   DataKind.COLLECTION, "weights", None) if k != old])
    case.parts[name].data_kind = new
    return f"part_kind.{getattr(new, 'value', new)}", f"{name}: {old} -> {new}", REJECT


@_picking(_pick_part, touch=True)
def part_data(case, touched):
    name = touched[1]
    value = case.choice([[1.0, 2.0], "weights", 7, torch.zeros(3), np.zeros(3, np.float32)])
    case.parts[name].data = value
    return f"part_data.{type(value).__name__}", f"{name}.data = {type(value).__name__}", REJECT


def part_empty(case):
    """Every array of a weight part removed by a filter: legal; an empty METRICS part is not."""
    names = [n for n, dxo in case.parts.items() if isinstance(dxo, DXO) and isinstance(dxo.data, dict)
             and not any(t[0] == n for t in case.touched)]
    if not names:
        return None
    name = case.choice(names)
    case.parts[name].data = {}
    case.touch(("part", name))
    expect = REJECT if name == METRICS else EITHER if name == SELECTOR_MOMENTS else ACCEPT  # see remove_name
    return f"part_empty.{'metrics' if name == METRICS else 'weights'}", name, expect


def part_replace(case):
    names = list(case.parts)
    if not names:
        return None
    name = case.choice(names)
    old = case.parts[name]
    new = case.choice(["dict", None, "text", [1, 2], torch.zeros(2)])
    case.parts[name] = old.to_dict() if new == "dict" and isinstance(old, DXO) else new
    case.touch(("part", name))
    return f"part_replace.{type(case.parts[name]).__name__}", name, REJECT


def part_remove(case):
    names = [n for n in case.parts if ("part", n) not in case.touched]
    if not names:
        return None
    name = case.choice(names)
    del case.parts[name]
    case.touch(("part", name))
    return "part_remove", name, REJECT


def part_extra(case):
    name = case.choice(["extra", "global2", SELECTOR_MOMENTS, SELECTOR_GRADIENT, "personalized "])
    if name in case.parts:
        return None
    case.parts[name] = DXO(DataKind.WEIGHTS, {"conv.bias": torch.zeros(3)})
    case.touch(("part", name))
    return "part_extra", name, REJECT


def steps_meta(case):
    dxo = case.parts.get(GLOBAL)
    if not isinstance(dxo, DXO) or not isinstance(dxo.meta, dict) or ("meta", "steps") in case.touched:
        return None
    case.touch(("meta", "steps"))
    if case.rng.random() < 0.15:
        dxo.meta.pop(MetaKey.NUM_STEPS_CURRENT_ROUND, None)
        return "steps.missing", "global meta", REJECT
    if case.rng.random() < 0.1:
        dxo.meta[MetaKey.NUM_STEPS_CURRENT_ROUND] = BIG_INT
        case.direct = True  # msgpack carries at most 64-bit integers; a server-side filter could set it
        return "steps.bigint", "steps = 10**400", REJECT
    if case.rng.random() < 0.25:
        value = case.choice([10**6, 2**63 - 1, 2**64 - 1])
        dxo.meta[MetaKey.NUM_STEPS_CURRENT_ROUND] = value
        return "steps.huge", f"steps = {value}", EITHER
    value = case.choice(WRONG_STEPS)
    dxo.meta[MetaKey.NUM_STEPS_CURRENT_ROUND] = value
    return f"steps.{type(value).__name__}", f"steps = {value!r}", REJECT


def part_meta(case):
    """Meta FedSM does not use (a part's round, its content tag) or NVFlare's filter history: odd
    types may be taken, but must not crash the server."""
    names = [n for n, dxo in case.parts.items() if isinstance(dxo, DXO) and isinstance(dxo.meta, dict)]
    if not names:
        return None
    name = case.choice(names)
    key = case.choice([AppConstants.CURRENT_ROUND, "fedsm_content", MetaKey.FILTER_HISTORY])
    if case.rng.random() < 0.1:
        case.parts[name].meta = case.choice(["meta", [1, 2], 5])  # a DXO rejects it; a filter may set it
        case.direct = True
        return "part_meta.not_dict", f"{name} meta = {case.parts[name].meta!r}", REJECT if name == GLOBAL else EITHER
    value = case.choice([None, "x", 5, 1.5, [1, 2], {"a": 1}, -3])
    case.parts[name].meta[key] = value
    return f"part_meta.{key}.{type(value).__name__}", f"{name} meta {key} = {value!r}", EITHER


def collection_meta(case):
    meta = case.collection.get("meta")
    if not isinstance(meta, dict):
        return None
    key = case.choice([AppConstants.CURRENT_ROUND, LABEL_KEY, NUM_VALIDATION_KEY, SECONDS_KEY, MEMORY_KEY, "extra"])
    if ("meta", key) in case.touched:
        return None
    case.touch(("meta", key))
    if key == "extra":
        meta["fedsm_something_new"] = case.choice([1, "x", None, [1], {"a": 1}])
        return "meta.extra_key", "fedsm_something_new", ACCEPT
    if case.rng.random() < 0.15:
        del meta[key]
        return f"meta.{key}.missing", key, ACCEPT if key == MEMORY_KEY else REJECT
    if key == SECONDS_KEY:
        return _seconds_meta(case, meta)
    if key == MEMORY_KEY:
        how = case.choice(["type", "extra", "value", "huge"])
        value = {"type": lambda: case.choice(["1", [1], None, 5]), "extra": lambda: {"rss": 1, "swap": 2},
                 "value": lambda: {"rss": case.choice([-1, 1.5, "1", None, True])},
                 "huge": lambda: {"rss": 2**64 - 1, "peak": 2**64 - 1}}[how]()
        meta[key] = value
        return f"meta.memory.{how}", repr(value), EITHER if how == "huge" else REJECT
    if key == NUM_VALIDATION_KEY and case.rng.random() < 0.3:
        meta[key] = case.choice([0, 2**63 - 1, 2**64 - 1])
        return "meta.num_validation.range", f"{key} = {meta[key]}", EITHER
    if key == AppConstants.CURRENT_ROUND and case.rng.random() < 0.4:
        meta[key] = case.choice([0, case.round - 1, case.round + 1, 2**63])
        return "meta.round.other_round", f"round {meta[key]} in round {case.round}", REJECT
    if key == LABEL_KEY and case.rng.random() < 0.4:
        meta[key] = case.choice([*case.other_labels, 2**63])
        return "meta.label.other", f"label {meta[key]}", REJECT
    value = case.choice(WRONG_INTS)
    meta[key] = value
    return f"meta.{key}.{type(value).__name__}", f"{key} = {value!r}", REJECT


def _seconds_meta(case, meta):
    how = case.choice(["type", "extra", "value", "huge", "bigint"])
    if how == "bigint":
        meta[SECONDS_KEY] = {**meta[SECONDS_KEY], "train": BIG_INT}
        case.direct = True
    elif how == "type":
        meta[SECONDS_KEY] = case.choice([None, "1", [1.0], 5.0])
    elif how == "extra":
        meta[SECONDS_KEY] = {**meta[SECONDS_KEY], "sleep": 1.0}
    elif how == "value":
        meta[SECONDS_KEY] = {**meta[SECONDS_KEY], "train": case.choice(WRONG_SECONDS)}
    else:
        meta[SECONDS_KEY] = {**meta[SECONDS_KEY], case.choice(["train", "busy_until"]): case.choice([1e300, 2**64 - 1])}
    return f"meta.seconds.{how}", repr(meta[SECONDS_KEY]), REJECT


def metrics(case):
    dxo = case.parts.get(METRICS)
    if not isinstance(dxo, DXO) or not isinstance(dxo.data, dict) or ("part", METRICS) in case.touched:
        return None
    case.touch(("part", METRICS))
    how = case.choice(["wrong", "wrong", "legal", "missing", "extra", "bigint"])
    tag = case.choice(list(METRIC_TAGS))
    if how == "wrong":
        dxo.data[tag] = case.choice(WRONG_METRICS)
        return f"metrics.wrong.{type(dxo.data[tag]).__name__}", f"{tag} = {dxo.data[tag]!r}", REJECT
    if how == "bigint":
        dxo.data[tag] = BIG_INT
        case.direct = True
        return "metrics.bigint", f"{tag} = 10**400", REJECT
    if how == "legal":
        dxo.data[tag] = case.choice([math.nan, 0.0, 1.0, 0, 1])
        return "metrics.legal", f"{tag} = {dxo.data[tag]!r}", ACCEPT
    if how == "missing":
        del dxo.data[tag]
        return "metrics.missing", tag, REJECT
    dxo.data["val_metric_extra"] = 0.5
    return "metrics.extra", "val_metric_extra", REJECT


def collection(case):
    """The message itself: not a COLLECTION, no DXO, data or meta of the wrong type."""
    how = case.choice(["kind", "data", "meta", "dxo", "header", "empty"])
    if how == "kind":
        case.collection["kind"] = case.choice([DataKind.WEIGHTS, "collection", None, 3])
    elif how == "data":
        case.collection["data"] = case.choice([[1, 2], "parts", None, 5])
    elif how == "meta":
        case.collection["meta"] = case.choice([[1, 2], "meta", 5])
    elif how == "dxo":
        case.s["DXO"] = case.choice([None, [1], "dxo", {}, 0])
    elif how == "header":
        case.s.set_header("__content_type__", case.choice([None, "JSON"]))
    else:
        for key in [k for k in case.s if k != "__headers__"]:
            del case.s[key]
    case.touch(("message",))
    return f"collection.{how}", how, REJECT


MUTATIONS = [nonfinite, oversize, large, dtype, numpy_float32, not_array, shape, values, negative_sq, adam_step,
             remove_name, remove_piece, rename, extra_name, huge_piece_index, piece_index_format, swap_pieces,
             relayout, empty_piece, many_pieces, non_text_name, part_kind, part_data, part_empty, part_replace,
             part_remove, part_extra, steps_meta, part_meta, collection_meta, metrics]
LAST_ONLY = [collection]  # after it nothing of the message can be found


def mutate(case: Case, count: int) -> list[tuple[str, str, str]]:
    """Apply up to `count` random mutations (the message-level ones only last); returns what was done."""
    done = []
    for attempt in range(count * 4):
        if len(done) == count:
            break
        pool = MUTATIONS + (LAST_ONLY if len(done) == count - 1 else [])
        mutation = case.choice(pool)
        try:
            result = mutation(case)
        except (KeyError, TypeError, AttributeError, IndexError, ValueError):
            result = None  # an earlier mutation left nothing for this one to edit
        if result is not None:
            done.append(result)
        if mutation in LAST_ONLY and result is not None:
            break
    return done


def expectation(done: list[tuple[str, str, str]]) -> str:
    return max((expect for _, _, expect in done), key=STRICTNESS.get, default=ACCEPT)
