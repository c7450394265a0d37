"""Spool folders a killed server left behind are removed at the next start; nothing else is."""

import os
import subprocess
import sys
import tempfile
import time

import pytest
from nvflare.fuel.f3.cellnet.cell import Cell

from fedsm.flare.update_spool import remove_stale_spools, spool_owner, spool_updates_to_disk, stale_spools

LONG_AGO = time.time() - 3600


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _folder(directory, name: str, changed: float | None = None):
    folder = directory / name
    folder.mkdir()
    (folder / "update.safetensors").write_bytes(b"x")
    if changed is not None:
        os.utime(folder, (changed, changed))
    return folder


@pytest.fixture
def tmpdir_here(tmp_path, monkeypatch):
    """`tmp_path` as the process's temporary directory (`TMPDIR`)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


@pytest.fixture
def running_pid():
    """The PID of a process that runs through the test."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    time.sleep(0.1)
    yield process.pid
    process.kill()
    process.wait()


def test_only_old_folders_of_gone_servers_are_stale(tmp_path, running_pid):
    made = time.time() + 1  # after the running process started
    started = made + 10  # this server's start
    dead = _dead_pid()
    killed = _folder(tmp_path, f"fedsm_updates_pid{dead}_simulate_job_ab_1", made)
    running = _folder(tmp_path, f"fedsm_updates_pid{running_pid}_job_cd", made)
    reused = _folder(tmp_path, f"fedsm_updates_pid{running_pid}_job_ef", LONG_AGO)  # older than its PID's process
    _folder(tmp_path, f"fedsm_updates_pid{dead}_job_gh", started + 1)  # changed after this server started
    _folder(tmp_path, "fedsm_updates_job_ij", LONG_AGO)  # no PID recorded: never taken
    _folder(tmp_path, f"other_pid{dead}_x", LONG_AGO)
    assert sorted(stale_spools(tmp_path, started)) == sorted([killed, reused])
    assert running not in stale_spools(tmp_path, started)


def test_removal_takes_a_gone_servers_folder_and_leaves_a_new_one(tmp_path):
    killed = _folder(tmp_path, f"fedsm_updates_pid{_dead_pid()}_job_ab", LONG_AGO)
    new = _folder(tmp_path, f"fedsm_updates_pid{_dead_pid()}_job_cd")
    assert remove_stale_spools(tmp_path) == [killed]
    assert not killed.exists() and new.exists()


def test_the_spool_records_its_pid_and_cleans_up_at_start(tmpdir_here):
    leftover = _folder(tmpdir_here, f"fedsm_updates_pid{_dead_pid()}_job_ab", LONG_AGO)
    with spool_updates_to_disk([], "job") as folder:
        assert folder is None and not leftover.exists()
    leftover = _folder(tmpdir_here, f"fedsm_updates_pid{_dead_pid()}_job_cd", LONG_AGO)
    cell = Cell(fqcn="cleanup_server", root_url="tcp://127.0.0.1:0", secure=False, credentials={},
                create_internal_listener=False)
    with spool_updates_to_disk([cell], "job") as folder:
        assert not leftover.exists()
        assert os.path.dirname(folder) == str(tmpdir_here)
        assert spool_owner(tmpdir_here / os.path.basename(folder)) == os.getpid()
        assert remove_stale_spools() == []  # our own running spool is kept
    assert not os.path.exists(folder)
