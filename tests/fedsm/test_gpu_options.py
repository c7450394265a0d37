"""`amp` and `channels_last` of config_train.json: validated like every key, settable as every key, a
no-op on the CPU (one note saying so), and, where on, forward passes in bfloat16 with float32 losses.
The round's peak GPU memory reaches the benchmark's report."""

import importlib.util
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.losses import DiceLoss
from monai.networks.nets import UNet

from fedsm.config import TrainConfig
from fedsm.flare.dxo_codec import split_into_pieces
from fedsm.flare.round_costs import describe, round_record
from fedsm.job_config import derive_job, parse_override
from fedsm.models.networks import build_selector, build_unet
from fedsm.models.weights import get_weights, set_weights
from fedsm.runtime import Compute, choose_device, compute_for
from fedsm.selector_training import selector_training
from fedsm.training import train_segmentation, validate_segmentation, validate_selector

JOB = "jobs/fedsm_prostate"
CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)
FLOAT32_ON_CPU = Compute(CPU)
LABEL = 1


def _job_config() -> dict:
    return json.loads(Path(JOB, "app", "config", "config_train.json").read_text())


def _loader(count=4, size=32, batch_size=2):
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(count, 1, size, size, generator=generator)
    masks = (torch.rand(count, 1, size, size, generator=generator) > 0.7).float()
    return [{"image": images[i:i + batch_size], "label": masks[i:i + batch_size]} for i in range(0, count, batch_size)]


def _client_round(compute: Compute) -> dict:
    """A UNet epoch, the selector's full-batch gradient and both validations, as the learner runs them;
    `FLOAT32_ON_CPU` runs them as before the switches existed. `Compute(CPU, amp=True)`, which
    `compute_for` never builds, autocasts on the CPU, so that the bfloat16 path runs without a GPU."""
    torch.manual_seed(0)
    unet, selector = build_unet().to(memory_format=compute.memory_format), build_selector("light", 3)
    loader = _loader()
    loss, _ = train_segmentation(unet, torch.optim.Adam(unet.parameters(), lr=1e-3), loader, 1, compute)
    upload, selector_loss = selector_training("client_adam_on_server").client_step(
        selector, torch.optim.Adam(selector.parameters()), loader, LABEL, 1, compute, None)
    metrics = (validate_segmentation(unet, loader, compute), *validate_selector(selector, loader, LABEL, compute))
    return {"losses": (loss, selector_loss), "metrics": metrics, "unet": get_weights(unet),
            "gradient": upload.gradient}


def _assert_bitwise_equal(first: dict, second: dict) -> None:
    assert first["losses"] == second["losses"]
    np.testing.assert_array_equal(first["metrics"], second["metrics"])
    for part in ("unet", "gradient"):
        assert first[part].keys() == second[part].keys()
        for name, array in first[part].items():
            assert array.tobytes() == second[part][name].tobytes(), (part, name)


def test_the_job_has_both_switches_off():
    config = TrainConfig.from_dict(_job_config())
    assert (config.amp, config.channels_last) == (False, False)
    assert TrainConfig.from_dict({**_job_config(), "amp": True, "channels_last": True}).amp is True


@pytest.mark.parametrize("key", ["amp", "channels_last"])
@pytest.mark.parametrize("value", ["true", 1, 0, None, 1.0])
def test_a_switch_that_is_not_true_or_false_is_an_error_naming_key_and_file(tmp_path, key, value):
    path = tmp_path / "config_train.json"
    path.write_text(json.dumps({**_job_config(), key: value}))
    with pytest.raises(ValueError, match=f"^{re.escape(f'{path}: {key!r} must be true or false, got {value!r}')}$"):
        TrainConfig.from_file(path)


def test_a_bool_stays_refused_for_number_keys():
    with pytest.raises(ValueError, match="'image_size' must be int, got True"):
        TrainConfig.from_dict({**_job_config(), "image_size": True})


def test_switches_are_set_as_every_key_through_job_config(tmp_path):
    overrides = dict(parse_override(text) for text in ("train.amp=true", "train.channels_last=true"))
    job = derive_job(JOB, tmp_path / "job", overrides)
    config = TrainConfig.from_file(job / "app" / "config" / "config_train.json")
    assert (config.amp, config.channels_last) == (True, True)
    with pytest.raises(ValueError, match="'amp' must be true or false, got 'yes'"):
        derive_job(JOB, tmp_path / "bad", {"train.amp": "yes"})


def test_switches_are_set_as_every_key_through_the_recipe(tmp_path):
    from fedsm.recipe import FedSMRecipe

    recipe = FedSMRecipe.from_settings({"train.amp": True, "train.channels_last": True})
    recipe.export(str(tmp_path))
    exported = next((tmp_path / recipe.name).rglob("config_train.json"))
    assert TrainConfig.from_file(exported).amp and TrainConfig.from_file(exported).channels_last
    with pytest.raises(ValueError, match="'channels_last' must be true or false, got 'yes'"):
        FedSMRecipe.from_settings({"train.channels_last": "yes"})


@pytest.mark.parametrize("amp, channels_last, note", [
    (True, False, "'amp'"), (False, True, "'channels_last'"), (True, True, "'amp' and 'channels_last'"),
    (False, False, None)])
def test_on_the_cpu_the_switches_are_ignored_with_one_warning(amp, channels_last, note, caplog):
    with caplog.at_level(logging.WARNING, logger="fedsm.runtime"):
        assert compute_for(amp, channels_last, CPU) == FLOAT32_ON_CPU
    assert caplog.messages == ([f"config_train.json: {note} ignored on cpu (CUDA only)"] if note else [])


def test_on_cuda_the_switches_act_without_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="fedsm.runtime"):
        assert compute_for(True, True, CUDA) == Compute(CUDA, amp=True, channels_last=True)
        assert compute_for(True, False, CUDA) == Compute(CUDA, amp=True)
    assert caplog.messages == []


def test_the_device_is_the_one_choose_device_picks_and_the_log_names_the_switches_where_they_act():
    assert compute_for(True, True).device == choose_device()
    assert str(compute_for(True, True, CPU)) == "cpu"
    assert str(Compute(CUDA, amp=True)) == "cuda:0 (amp on, channels_last off)"


def test_amp_on_the_cpu_trains_bitwise_as_without_it():
    compute = compute_for(True, True, CPU)
    _assert_bitwise_equal(_client_round(compute), _client_round(FLOAT32_ON_CPU))


def test_amp_runs_forward_passes_in_bfloat16_and_losses_in_float32():
    outputs, loss_inputs = set(), set()

    def record(module, args, output):
        if isinstance(module, (DiceLoss, torch.nn.CrossEntropyLoss)):
            loss_inputs.add(args[0].dtype)
        elif isinstance(output, torch.Tensor):
            outputs.add(output.dtype)

    reference = _client_round(FLOAT32_ON_CPU)
    with torch.nn.modules.module.register_module_forward_hook(record):
        bfloat16 = _client_round(Compute(CPU, amp=True))
    assert torch.bfloat16 in outputs and loss_inputs == {torch.float32}
    assert all(np.isfinite(bfloat16["losses"])) and bfloat16["losses"] != reference["losses"]
    assert bfloat16["losses"] == pytest.approx(reference["losses"], rel=0.05)
    assert all(array.dtype == np.float32 for part in ("unet", "gradient") for array in bfloat16[part].values())


def test_channels_last_batches_and_weights_travel_as_contiguous_arrays():
    inputs = []
    channels_last = Compute(CPU, channels_last=True)
    with torch.nn.modules.module.register_module_forward_pre_hook(
            lambda module, args: inputs.append(args[0].is_contiguous(memory_format=torch.channels_last))
            if isinstance(module, UNet) else None):
        result = _client_round(channels_last)
    assert inputs and all(inputs)
    reference = _client_round(FLOAT32_ON_CPU)
    assert result["losses"] == pytest.approx(reference["losses"], rel=1e-4)
    for name, array in reference["unet"].items():  # other kernels; Adam's first steps move by up to lr each
        np.testing.assert_allclose(result["unet"][name], array, rtol=0, atol=2e-3, err_msg=name)
    model = build_unet().to(memory_format=torch.channels_last)
    pieces = split_into_pieces(get_weights(model))
    assert all(piece.flags.c_contiguous for piece in pieces.values())
    set_weights(model, pieces)
    convolutions = [param for param in model.parameters() if param.dim() == 4]
    assert all(param.is_contiguous(memory_format=torch.channels_last) for param in convolutions)
    assert not all(param.is_contiguous() for param in convolutions)


def _benchmark():
    spec = importlib.util.spec_from_file_location("benchmark", "tools/benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _record(client_memory: dict, tmp_path) -> tuple:
    """The server's round-2 record and log line for these clients' memory reports, as `RoundCosts`
    writes them, and the benchmark's reading of the record file."""
    clients = {name: {"seconds": {"validate": 1.0, "train": 13.0, "busy_from": 100.0, "busy_until": 115.0},
                      "down": 2**20, "up": 2**20} for name in client_memory}
    record = round_record(2, 20.0, 2.0, clients, {"server": {"rss": 2**30, "peak": 2**30}, **client_memory})
    records = tmp_path / f"{len(list(tmp_path.iterdir()))}.jsonl"
    records.write_text(json.dumps(record) + "\n")
    return describe(record), _benchmark().round_costs(records)


def test_the_gpu_peak_reaches_the_cost_line_and_the_benchmark_report(tmp_path):
    benchmark, gib = _benchmark(), 2**30
    cpu = {"client_a": {"rss": 3 * gib, "peak": 4 * gib}, "client_b": {"rss": 2 * gib, "peak": 5 * gib}}
    gpu = {"client_a": {**cpu["client_a"], "gpu_peak": 49 * gib // 4}, "client_b": {**cpu["client_b"], "gpu_peak": 0}}
    (cpu_line, (from_cpu,)), (gpu_line, (from_gpu,)) = _record(cpu, tmp_path), _record(gpu, tmp_path)
    assert "GPU" not in cpu_line and gpu_line.startswith(cpu_line)
    assert gpu_line.endswith("; GPU peak GiB: client_a 12.25, client_b 0.00")
    assert from_cpu["gpu"] == {} and from_cpu["memory"]["client_b"] == (2.0, 5.0)
    assert from_cpu["busy"] == 15.0 and from_cpu["communicate"] == 3.0 and from_cpu["down"] == 1.0
    assert from_gpu["memory"] == from_cpu["memory"] and from_gpu["gpu"] == {"client_a": 12.25, "client_b": 0.0}
    assert "GPU" not in benchmark.format_report([from_cpu], gib, gib)
    assert ("peak GPU memory per client in the round, GiB:\n    2 client_a 12.25, client_b 0.00"
            in benchmark.format_report([from_gpu], gib, gib))
