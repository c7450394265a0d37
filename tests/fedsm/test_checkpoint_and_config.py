import dataclasses
import json

import numpy as np
import pytest
import torch

from fedsm.config import TrainConfig, read_job_configs, resolve_path
from fedsm.job_config import derive_job
from fedsm.core.model_set import ModelSet
from fedsm.io.checkpoint import (CheckpointError, load_checkpoint, model_set_from_checkpoint,
                                 model_set_to_checkpoint, save_checkpoint)


def _model_set():
    return ModelSet(global_model={"w": np.arange(6, dtype=np.float32).reshape(2, 3)},
                    selector={"s": np.ones(4, np.float32)},
                    selector_moments={"exp_avg/s": np.full(4, 0.5, np.float32), "step": np.asarray(2.0, np.float32)},
                    personalized={"client_a": {"w": np.zeros((2, 3), np.float32)}}, next_round=3,
                    best_metrics={"global": 0.5})


def test_model_set_checkpoint_round_trip_with_weights_only(tmp_path):
    path = tmp_path / "state.pt"
    save_checkpoint(path, model_set_to_checkpoint(_model_set()))
    raw = torch.load(path, weights_only=True)
    assert isinstance(raw["global"]["w"], torch.Tensor) and raw["global"]["w"].dtype == torch.float32
    restored = model_set_from_checkpoint(load_checkpoint(path), path)
    np.testing.assert_array_equal(restored.global_model["w"], _model_set().global_model["w"])
    assert float(restored.selector_moments["step"]) == 2.0
    assert restored.next_round == 3 and restored.best_metrics == {"global": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_truncated_checkpoint_error_names_file_and_failed_write_keeps_old(tmp_path):
    path = tmp_path / "state.pt"
    save_checkpoint(path, {"a": np.ones(1000, np.float32)})
    good = path.read_bytes()
    (tmp_path / "broken.pt").write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="broken.pt"):
        load_checkpoint(tmp_path / "broken.pt")
    with pytest.raises(Exception):
        save_checkpoint(path, {"a": lambda: None})
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.pt", "state.pt"]


def test_checkpoint_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"a": np.ones(2)}, path)  # a pickled NumPy array is not loadable with weights_only
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(path)


def test_train_config_errors_name_file_and_key(tmp_path):
    config = json.loads(open("jobs/fedsm_prostate/app/config/config_train.json").read())
    TrainConfig.from_dict(config)
    path = tmp_path / "config_train.json"
    path.write_text(json.dumps({**config, "image_sise": 64}))
    with pytest.raises(ValueError, match=r"config_train.json: unknown keys \['image_sise'\]"):
        TrainConfig.from_file(path)
    path.write_text(json.dumps({**config, "selector": "resnet"}))
    with pytest.raises(ValueError, match="'selector' must be one of"):
        TrainConfig.from_file(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read training config"):
        TrainConfig.from_file(path)



def test_a_job_folders_configs_are_read_together_and_errors_name_the_file_and_the_job(tmp_path):
    configs = read_job_configs("jobs/fedsm_prostate")
    assert configs.train == TrainConfig.from_file("jobs/fedsm_prostate/app/config/config_train.json")
    assert sorted(configs.label_mapping.values()) == list(range(configs.train.select_num_classes))
    assert configs.server["workflows"][0]["args"]["client_id_label_mapping"] == configs.label_mapping
    derived = derive_job("jobs/fedsm_prostate", tmp_path / "job", {})
    train_file = derived / "app" / "config" / "config_train.json"
    train_file.write_text(json.dumps({**json.loads(train_file.read_text()), "select_num_classes": 2}))
    with pytest.raises(ValueError, match=r"app/config/config_fed_server.json of the demo job: .* is not a label in \[0, 2\)"):
        read_job_configs(derived, described_as="the demo job")
    (derived / "app" / "config" / "config_train.json").write_text("{not json")
    with pytest.raises(ValueError, match=rf"app/config/config_train.json of {derived}: cannot read it"):
        read_job_configs(derived)

def test_resolve_path_expands_and_rejects_unset_variables(monkeypatch):
    monkeypatch.setenv("FEDSM_TEST_ROOT", "/data")
    assert str(resolve_path("$FEDSM_TEST_ROOT/x", "dataset_base_dir")) == "/data/x"
    monkeypatch.delenv("FEDSM_TEST_ROOT")
    with pytest.raises(ValueError, match="dataset_base_dir"):
        resolve_path("$FEDSM_TEST_ROOT/x", "dataset_base_dir")


def test_config_defaults_are_the_job_folders_values():
    shipped = json.loads(open("jobs/fedsm_prostate/app/config/config_train.json").read())
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
    assert set(defaults) <= set(shipped)
    assert {name: shipped[name] for name in defaults} == defaults
