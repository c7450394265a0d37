"""Checkpoints are private (0600) whatever the umask; other outputs keep the umask's permissions."""

import os
import stat

import numpy as np

from fedsm.io.atomic import write_text_atomic
from fedsm.io.checkpoint import save_checkpoint


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def test_a_checkpoint_is_0600_also_over_a_readable_one(tmp_path):
    path = tmp_path / "best_global_model.pt"
    path.write_bytes(b"old")
    os.chmod(path, 0o644)
    save_checkpoint(path, {"weights": {"w": np.zeros(3, np.float32)}, "round": 1})
    assert _mode(path) == 0o600


def test_a_json_report_keeps_the_umask_permissions(tmp_path):
    path = tmp_path / "report.json"
    write_text_atomic(path, "{}")
    assert _mode(path) == 0o666 & ~_umask()
