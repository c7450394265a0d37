"""The workflow's background checkpoint writes: in order, waited for, and a failed write stops the run."""

import threading
import time

import numpy as np

from fedsm.core.model_set import ModelSet
from fedsm.flare.workflow import FedSMController, _snapshot
from fedsm.io.checkpoint import save_checkpoint


class PanicRecordingController(FedSMController):
    """The real controller; only its panic (which needs a running NVFlare engine) is recorded instead."""

    def __init__(self):
        super().__init__(client_id_label_mapping={"a": 0})
        self.panics: list[str] = []

    def system_panic(self, reason: str, fl_ctx) -> None:
        self.panics.append(reason)


def test_writes_run_in_order_on_one_thread_and_are_waited_for():
    controller = PanicRecordingController()
    done: list[tuple[int, str]] = []

    def write(number: int) -> None:
        time.sleep(0.05 * (3 - number))  # the first is the slowest
        done.append((number, threading.current_thread().name))

    for number in range(3):
        controller._writes.submit(write, number)
    assert controller._finish_writes(None)
    assert [number for number, _ in done] == [0, 1, 2]
    assert all(name.startswith("fedsm_checkpoints") for _, name in done)
    assert controller.panics == []


def test_a_failed_write_stops_the_run_naming_the_file(tmp_path):
    controller = PanicRecordingController()
    (tmp_path / "not_a_folder").write_text("a file where the app folder should be")
    target = tmp_path / "not_a_folder" / "fedsm_state.pt"
    controller._writes.submit(save_checkpoint, target, {"weights": {"w": np.zeros(2, np.float32)}})
    assert not controller._finish_writes(None)
    assert len(controller.panics) == 1 and "cannot write a checkpoint" in controller.panics[0]
    assert "not_a_folder" in controller.panics[0]
    assert controller._finish_writes(None)  # the failure is reported once


def test_snapshot_shares_arrays_but_not_the_best_metrics():
    models = ModelSet(global_model={"w": np.zeros(2, np.float32)}, selector={}, selector_moments={},
                      personalized={}, best_metrics={"global": 0.5})
    snapshot = _snapshot(models)
    models.best_metrics["global"] = 0.9
    assert snapshot.best_metrics == {"global": 0.5}
    assert snapshot.global_model["w"] is models.global_model["w"]
