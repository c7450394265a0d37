"""The FedSM message format: large arrays travel in row pieces and arrive whole."""

import numpy as np
import pytest
from nvflare.app_common.decomposers import common_decomposers
from nvflare.fuel.utils import fobs

from fedsm.flare.wire import Meta, join_pieces, pack, split_into_pieces, unpack

KIB = 1024


def _selector():
    rng = np.random.default_rng(0)
    return {"fc.weight": rng.standard_normal((300, 100), dtype=np.float32),  # 117 KiB
            "fc.bias": rng.standard_normal(300, dtype=np.float32),
            "step": np.asarray(3.0, dtype=np.float32)}


def test_split_makes_row_views_of_large_arrays_only():
    weights = _selector()
    pieces, split = split_into_pieces(weights, piece_bytes=16 * KIB)
    assert split == {"fc.weight": [8, 300, 100]}
    assert pieces["fc.bias"] is weights["fc.bias"] and pieces["step"] is weights["step"]
    rows = [pieces[f"fc.weight#{i}"] for i in range(8)]
    assert all(np.shares_memory(row, weights["fc.weight"]) and row.nbytes <= 16 * KIB for row in rows)
    assert sum(len(row) for row in rows) == 300


def test_pieces_join_back_exactly_and_twice_is_harmless():
    weights = _selector()
    pieces, split = split_into_pieces(weights, piece_bytes=16 * KIB)
    join_pieces(pieces, split)
    assert sorted(pieces) == sorted(weights)
    np.testing.assert_array_equal(pieces["fc.weight"], weights["fc.weight"])
    assert pieces["fc.weight"].dtype == np.float32 and pieces["fc.weight"].flags.writeable
    joined = pieces["fc.weight"]
    join_pieces(pieces, split)
    assert pieces["fc.weight"] is joined


def test_a_missing_piece_is_an_error_naming_it():
    pieces, split = split_into_pieces(_selector(), piece_bytes=16 * KIB)
    del pieces["fc.weight#5"]
    with pytest.raises(ValueError, match="fc.weight#5"):
        join_pieces(pieces, split)


def test_pack_and_unpack_through_nvflare_serialization():
    common_decomposers.register()  # as NVFlare does at start-up
    selector, personalized = _selector(), {"w": np.ones((2, 2), dtype=np.float32)}
    shareable = pack({"selector": selector, "personalized": personalized}, {Meta.ROUND: 4}, piece_bytes=16 * KIB)
    received = fobs.loads(fobs.dumps(shareable))
    parts, meta = unpack(received, ("selector", "personalized"))
    assert meta[Meta.ROUND] == 4
    assert sorted(parts["selector"]) == sorted(selector)
    for name, array in selector.items():
        np.testing.assert_array_equal(parts["selector"][name], array)
        assert parts["selector"][name].dtype == array.dtype
    np.testing.assert_array_equal(parts["personalized"]["w"], personalized["w"])


def test_unpack_rejects_a_message_without_an_expected_part():
    with pytest.raises(ValueError, match="selector"):
        unpack(pack({"global": {}}, {}), ("global", "selector"))


def test_unpack_reads_back_updates_spooled_to_disk(tmp_path):
    """With the server's update spool on, NVFlare hands over references to tensors on disk."""
    from nvflare.app_opt.pt.lazy_tensor_dict import LazyTensorDict
    from safetensors.torch import save_file

    selector = _selector()
    shareable = pack({"selector": selector}, {}, piece_bytes=16 * KIB)
    tensors = shareable["DXO"]["data"]["selector"]
    save_file({key: tensor.contiguous() for key, tensor in tensors.items()}, str(tmp_path / "update.safetensors"))
    spooled = LazyTensorDict({key: (str(tmp_path / "update.safetensors"), key) for key in tensors}, str(tmp_path))
    shareable["DXO"]["data"]["selector"] = {key: spooled.make_lazy_ref(key) for key in tensors}
    parts, _ = unpack(shareable, ("selector",))
    for name, array in selector.items():
        np.testing.assert_array_equal(parts["selector"][name], array)
        assert parts["selector"][name].shape == array.shape
