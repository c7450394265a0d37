"""A client's own state across runs: saved after a train task, restored only by the run that continues it."""

import os

import numpy as np
import pytest
import torch

from fedsm.core.adam_moments import extract_adam_moments
from fedsm.io.client_state import (CLIENT_STATE_FILENAME, apply_client_state, client_state_dir,
                                   copy_missing, restorable_state, save_client_state)
from fedsm.runtime import Compute
from fedsm.selector_training import selector_training

CPU = Compute(torch.device("cpu"))


def _model(seed=0, width=3):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, width), torch.nn.ReLU(), torch.nn.Linear(width, 2))


def _steps(model, optimizer, count, seed=1):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(count):
        optimizer.zero_grad()
        model(torch.randn(5, 4, generator=generator)).pow(2).sum().backward()
        optimizer.step()


def _pair(seed=0, width=3):
    models = {name: _model(seed + i, width) for i, name in enumerate(("global", "personalized"))}
    return models, {name: torch.optim.Adam(m.parameters(), lr=1e-2) for name, m in models.items()}


def _saved_after_round(folder, round_number, best=None):
    models, optimizers = _pair()
    for name in models:
        _steps(models[name], optimizers[name], 2)
    save_client_state(folder, round_number, optimizers, best or {"personalized": 0.5})
    return models, optimizers


def test_state_of_the_previous_round_is_restored_and_training_continues_identically(tmp_path):
    models, optimizers = _saved_after_round(tmp_path, 4, {"personalized": 0.75})
    assert oct((tmp_path / CLIENT_STATE_FILENAME).stat().st_mode & 0o777) == "0o600"
    fresh_models, fresh_optimizers = _pair()
    for name in models:  # the server sends the trained weights back; the optimizers come from the state
        fresh_models[name].load_state_dict(models[name].state_dict())
    restore = restorable_state(tmp_path, 5, fresh_optimizers)
    assert restore.state is not None and not restore.warning
    assert restore.state.round == 4 and restore.state.best_metrics == {"personalized": 0.75}
    assert "restored client state of round 4" in restore.message and str(tmp_path) in restore.message
    apply_client_state(restore.state, fresh_optimizers)
    for name in models:
        _steps(models[name], optimizers[name], 1, seed=7)
        _steps(fresh_models[name], fresh_optimizers[name], 1, seed=7)
        for a, b in zip(models[name].parameters(), fresh_models[name].parameters()):
            assert torch.equal(a, b)


@pytest.mark.parametrize("saved_round, task_round", [(4, 4), (4, 6), (4, 0), (0, 0)])
def test_a_state_of_another_round_is_not_restored(tmp_path, saved_round, task_round):
    _saved_after_round(tmp_path, saved_round)
    _, optimizers = _pair()
    restore = restorable_state(tmp_path, task_round, optimizers)
    assert restore.state is None and not restore.warning
    assert f"is of round {saved_round}, but this run starts at round {task_round}" in restore.message
    assert all(not o.state for o in optimizers.values())


def test_no_state_starts_fresh_quietly(tmp_path):
    restore = restorable_state(tmp_path / "absent", 0, _pair()[1])
    assert restore.state is None and not restore.warning and "no client state at" in restore.message


@pytest.mark.parametrize("damage", ["truncated", "garbage", "foreign", "other_model"])
def test_an_unusable_state_starts_fresh_with_a_warning_naming_the_file(tmp_path, damage):
    path = tmp_path / CLIENT_STATE_FILENAME
    if damage == "other_model":  # a state of differently shaped models: torch would load it and fail later
        models, optimizers = _pair(width=5)
        for name in models:
            _steps(models[name], optimizers[name], 1)
        save_client_state(tmp_path, 2, optimizers, {})
    else:
        _saved_after_round(tmp_path, 2)
        if damage == "truncated":
            path.write_bytes(path.read_bytes()[:100])
        elif damage == "garbage":
            path.write_bytes(b"not a checkpoint")
        else:
            torch.save({"round": 2}, path)
    _, optimizers = _pair()
    restore = restorable_state(tmp_path, 3, optimizers)
    assert restore.state is None and restore.warning
    assert f"cannot use client state {path}" in restore.message
    assert all(not o.state for o in optimizers.values())


def test_state_folder_is_the_app_folder_or_a_subfolder_per_client(tmp_path, monkeypatch):
    assert client_state_dir("", tmp_path / "app", "site-1") == tmp_path / "app"
    monkeypatch.setenv("FEDSM_TEST_STATE", str(tmp_path / "states"))
    assert client_state_dir("$FEDSM_TEST_STATE/run", tmp_path, "site-1") == tmp_path / "states" / "run" / "site-1"
    assert client_state_dir("~/s", tmp_path, "a") == (tmp_path.home() / "s" / "a")
    monkeypatch.delenv("FEDSM_TEST_STATE")
    with pytest.raises(ValueError, match="'client_state_dir'"):
        client_state_dir("$FEDSM_TEST_STATE/run", tmp_path, "site-1")


def test_copy_missing_copies_only_absent_files_atomically(tmp_path):
    source, target = tmp_path / "old", tmp_path / "new"
    source.mkdir()
    for name in ("a.pt", "b.pt"):
        (source / name).write_bytes(name.encode())
    target.mkdir()
    (target / "b.pt").write_bytes(b"newer")
    assert copy_missing(source, target, ["a.pt", "b.pt", "absent.pt"]) == ["a.pt"]
    assert (target / "a.pt").read_bytes() == b"a.pt" and (target / "b.pt").read_bytes() == b"newer"
    assert oct((target / "a.pt").stat().st_mode & 0o777) == "0o600"
    assert sorted(os.listdir(target)) == ["a.pt", "b.pt"]  # no temporary file left
    assert copy_missing(source, source, ["a.pt"]) == []


def test_client_adam_selector_step_does_not_depend_on_the_clients_earlier_optimizer_state():
    """Why the selector's optimizer is not in the client state: in `client_adam` the client loads the
    server's averaged moments before its step, replacing whatever it held."""
    loader = [{"image": torch.randn(3, 4, generator=torch.Generator().manual_seed(3)), "label": torch.zeros(3)}]
    received = {k: v.numpy().copy() for k, v in _model(seed=2).state_dict().items()}
    server_model = _model(seed=4)  # moments as the server sends them: those of earlier steps
    server_optimizer = torch.optim.Adam(server_model.parameters(), lr=1e-2)
    _steps(server_model, server_optimizer, 2)
    server_moments = extract_adam_moments(server_optimizer, server_model.named_parameters())
    uploads = []
    for earlier_steps in (0, 3):
        model = _model(seed=2)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        _steps(model, optimizer, earlier_steps)  # what the client's optimizer held before this round
        model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in received.items()})
        moments = {k: np.array(v) for k, v in server_moments.items()}
        upload, _ = selector_training("client_adam").client_step(model, optimizer, loader, 1, 1, CPU, moments)
        uploads.append(upload)
    for part in ("diff", "moments"):
        first, second = getattr(uploads[0], part), getattr(uploads[1], part)
        assert sorted(first) == sorted(second)
        for key in first:
            np.testing.assert_array_equal(first[key], second[key])
