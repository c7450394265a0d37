"""Routing by validation decides from the run's validation records only, never from test data.

A fake run where validation says the global model is better at site A while the test data say its
personalized model is: routed by validation, site A's images go to the global model; the decision
does not move when the test labels change, and follows the checkpoints' validation metrics.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fedsm.io.checkpoint import best_checkpoint_name, save_checkpoint
from fedsm.models.networks import build_selector, build_unet
from fedsm.models.weights import get_weights
from result_stat import prostate_2d_test_only as test_only

JOB_CONFIG = Path(__file__).resolve().parents[2] / "jobs" / "fedsm_prostate" / "app" / "config"
LABELS = {"client_I2CVB": 0, "client_MSD": 1, "client_NCI_ISBI_3T": 2}
SIZE = 32
OUTPUT_BIAS = "model.2.1.conv.unit0.conv.bias"


def _unet(logit: float) -> dict:
    """Weights of a UNet whose output is about `logit` everywhere: all foreground (> 0) or background."""
    weights = get_weights(build_unet())
    weights[OUTPUT_BIAS] = np.full_like(weights[OUTPUT_BIAS], logit)
    return weights


def _selector_certain_of(label: int) -> dict:
    weights = get_weights(build_selector("light", len(LABELS)))
    weights["classifier.weight"] = np.zeros_like(weights["classifier.weight"])
    weights["classifier.bias"] = np.where(np.arange(len(LABELS)) == label, 50.0, 0.0).astype(np.float32)
    return weights


def _write_test_set(root: Path, mask_rows: int) -> None:
    """One test slice per site; its mask covers the top `mask_rows` rows."""
    for client in LABELS:
        mask = np.zeros((SIZE, SIZE), np.uint8)
        mask[:mask_rows] = 255
        for name, array in (("img", np.full((SIZE, SIZE), 90, np.uint8)), ("mask", mask)):
            (root / "dataset" / client).mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(root / "dataset" / client / f"{name}.png")
        (root / "datalist").mkdir(exist_ok=True)
        pair = {"image": f"{client}/img.png", "label": f"{client}/mask.png"}
        (root / "datalist" / f"{client}.json").write_text(json.dumps({"training": [], "validation": [],
                                                                      "testing": [pair]}))


def _write_run(root: Path, personalized_validation: float) -> Path:
    """Server app folder: global model all background (validation Dice 0.6), every personalized model all
    foreground with `personalized_validation`, a selector certain of client_I2CVB."""
    app = root / "ws" / "server" / "simulate_job" / "app_server"
    (app / "config").mkdir(parents=True, exist_ok=True)
    shutil.copy(JOB_CONFIG / "config_fed_server.json", app / "config")
    train = json.loads((JOB_CONFIG / "config_train.json").read_text())
    train.update(image_size=SIZE, selector="light", dataset_base_dir=str(root / "dataset"),
                 datalist_json_path=str(root / "datalist"))
    (app / "config" / "config_train.json").write_text(json.dumps(train))
    torch.manual_seed(0)
    save_checkpoint(app / best_checkpoint_name("global"), {"weights": _unet(-100.0), "metric": 0.6, "round": 3})
    save_checkpoint(app / best_checkpoint_name("selector"),
                    {"weights": _selector_certain_of(0), "metric": 1.0, "round": 3})
    for client in LABELS:
        save_checkpoint(app / best_checkpoint_name("personalized", client),
                        {"weights": _unet(100.0), "metric": personalized_validation, "round": 2})
    return root / "ws"


def _evaluate(workspace: Path, *options: str) -> dict:
    return test_only.main(["--workspace", str(workspace), "--batch_size", "1", *options])


@pytest.mark.parametrize("mask_rows", [8, 2, 32])
def test_validation_decides_the_route_whatever_the_test_labels(tmp_path, mask_rows):
    _write_test_set(tmp_path, mask_rows)
    workspace = _write_run(tmp_path, personalized_validation=0.55)  # validation: global better everywhere
    published = _evaluate(workspace)
    routed = _evaluate(workspace, "--route_by_validation", "0")
    assert published["pooled"]["personalized_share"] == 1.0  # the selector sends everything to client_I2CVB
    assert routed["route_by_validation"]["personalized_sites"] == []
    assert routed["route_by_validation"]["validation_dice"] == {"global": 0.6, **{c: 0.55 for c in LABELS}}
    assert routed["pooled"]["personalized_share"] == 0.0
    assert routed["pooled"]["super_dice"] == pytest.approx(published["pooled"]["global_dice"])
    if mask_rows == 8:  # test data say the personalized model is far better; validation still rules
        assert published["pooled"]["super_dice"] > published["pooled"]["global_dice"] + 0.3


def test_a_site_whose_validation_beats_the_global_model_by_the_margin_keeps_its_personalized_model(tmp_path):
    _write_test_set(tmp_path, 8)
    workspace = _write_run(tmp_path, personalized_validation=0.65)
    published = _evaluate(workspace)
    assert _evaluate(workspace, "--route_by_validation", "0.1")["route_by_validation"]["personalized_sites"] == []
    routed = _evaluate(workspace, "--route_by_validation", "0.04")
    assert routed["route_by_validation"]["personalized_sites"] == list(LABELS)
    assert routed["pooled"] == published["pooled"]
    assert "route_by_validation" in routed and published["route_by_validation"] is None
