"""Bad input in the NVFlare simulator: clients whose data cannot load, a damaged or code-carrying
checkpoint, malformed updates. Each must end in a message naming the culprit, never a hang."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext

from fedsm.config import TrainConfig
from fedsm.flare.persistor import FedSMModelPersistor, initial_model_set
from fedsm.io.checkpoint import CheckpointError, model_set_to_checkpoint, save_checkpoint
from poc_helpers import CLIENTS, add_result_filters, run_simulator, tiny_job

SERVER_APP = Path("server") / "simulate_job" / "app_server"


def test_clients_whose_data_cannot_load_stop_the_run_at_start_naming_the_file(poc_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(poc_data / "dataset_2D", data / "dataset_2D")
    shutil.copytree(poc_data / "datalist_2D", data / "datalist_2D")
    datalists = data / "datalist_2D"
    (datalists / "client_MSD.json").unlink()  # missing datalist
    nci = json.loads((datalists / "client_NCI_ISBI_3T.json").read_text())
    unreadable = data / "dataset_2D" / nci["training"][0]["image"]
    unreadable.write_bytes(b"\x89PNG\r\n\x1a\n not an image")  # unreadable image
    i2cvb = json.loads((datalists / "client_I2CVB.json").read_text())
    (datalists / "client_I2CVB.json").write_text(json.dumps({**i2cvb, "training": []}))  # empty training split

    result, seconds = run_simulator(tiny_job(tmp_path / "job", data), tmp_path / "ws", timeout=240)
    log = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"client_MSD cannot start: datalist not found: {datalists / 'client_MSD.json'}" in log
    assert f"client_NCI_ISBI_3T cannot start: unreadable image file {unreadable}" in log
    assert f"client_I2CVB cannot start: {datalists / 'client_I2CVB.json'}: the 'training' split is empty" in log
    abort = next(line for line in log.splitlines() if "FATAL_SYSTEM_ERROR received: stopping the run: client_" in line)
    # the server learns the kind of error and the file name; the site's folders stay in the site's own log
    assert "cannot start: DataError: datalist not found: .../client_MSD.json" in abort or \
        "cannot start: ValueError: .../client_I2CVB.json: the 'training' split is empty" in abort or \
        "unreadable image file .../" in abort
    assert str(data) not in abort
    assert "Round 0 finished" not in log and not (tmp_path / "ws" / SERVER_APP / "fedsm_state.pt").exists()
    assert seconds < 120, f"the run took {seconds:.0f} s to stop"


def _saved_state(job: Path, path: Path) -> Path:
    models = initial_model_set(TrainConfig.from_file(job / "app" / "config" / "config_train.json"), list(CLIENTS))
    save_checkpoint(path, model_set_to_checkpoint(models))
    return path


def test_truncated_checkpoint_stops_the_run_naming_the_file_and_is_never_overwritten(poc_data, tmp_path):
    """The server's persistor reads the checkpoint: one client is enough to start the run."""
    state = _saved_state(tiny_job(tmp_path / "job0", poc_data), tmp_path / "fedsm_state.pt")
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    truncated = state.read_bytes()
    job = tiny_job(tmp_path / "job", poc_data, **{"server.resume_from": str(state)})
    result, seconds = run_simulator(job, tmp_path / "ws", timeout=240, clients=CLIENTS[:1])
    log = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"cannot load the FedSM model set: cannot load checkpoint {state}" in log
    assert "Round 0 of" not in log and seconds < 120
    assert state.read_bytes() == truncated
    assert not list((tmp_path / "ws" / SERVER_APP).glob("*.pt"))  # nothing written in place of it


class _RunsCode:
    """Pickled, it calls `Path.touch(marker)` when loaded without weights_only."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_checkpoint_carrying_code_is_refused_without_running_it(poc_data, tmp_path):
    marker = tmp_path / "code_ran"
    state = _saved_state(tiny_job(tmp_path / "job", poc_data), tmp_path / "fedsm_state.pt")
    content = torch.load(state, weights_only=True)
    content["payload"] = _RunsCode(marker)
    torch.save(content, state)
    app = tmp_path / "app_server"
    app.mkdir()
    fl_ctx = FLContext()
    fl_ctx.set_prop(FLContextKey.APP_ROOT, str(app))
    with pytest.raises(CheckpointError, match=f"cannot load checkpoint {state}"):
        FedSMModelPersistor(resume_from=str(state)).load(list(CLIENTS), fl_ctx)
    assert not marker.exists()
    torch.load(state, weights_only=False)  # the same file loaded unsafely would run the code
    assert marker.exists()


def test_updates_with_a_wrong_shape_or_dtype_are_rejected_the_others_aggregate(poc_data, tmp_path):
    job = tiny_job(tmp_path / "job", poc_data, **{"meta.min_clients": 1})
    add_result_filters(job, {"client_MSD": "shape", "client_NCI_ISBI_3T": "dtype"}, from_round=1)
    result, _ = run_simulator(job, tmp_path / "ws")
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert "reply of client_MSD to 'train' rejected: part 'personalized': '" in log and "has shape (1, 2, 3)" in log
    assert "reply of client_NCI_ISBI_3T to 'train' rejected: part 'personalized': '" in log
    assert "has dtype float16, expected float32" in log
    assert "Round 0 finished" in log and "aggregated ['client_I2CVB']" in log.split("Round 1 finished")[1]
    state = torch.load(tmp_path / "ws" / SERVER_APP / "fedsm_state.pt", weights_only=True)
    assert state["next_round"] == 2
    assert all(np.isfinite(t.numpy()).all() for part in ("global", "selector") for t in state[part].values())
