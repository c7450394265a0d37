"""Spool incoming client updates to disk: NVFlare's tensor disk offload, on the cells that receive them.

The offload itself is NVFlare's (its FOBS tensor decomposer writes the arriving tensors to files);
this module only switches it on. It does not use NVFlare 2.9's `setup_tensor_disk_offload`
(`nvflare.app_common.utils.tensor_disk_offload_context`) because that configures the one cell the
engine names, where the simulator receives results on two (the root `server` cell and the job's
`server.<job_id>`), and its folders carry no owner, so those of a server killed mid-round stay in
`TMPDIR` for good; here they are named after the server's PID and removed by its next start.
"""

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
from nvflare.fuel.f3.cellnet.core_cell import CoreCell
from nvflare.fuel.utils.fobs import FOBSContextKey

ROOT_DIR_KEY = "tensor_disk_offload_root_dir"  # the FOBS context key NVFlare's tensor decomposer reads
SPOOL_PREFIX = "fedsm_updates_"
_OWNER = re.compile(rf"{SPOOL_PREFIX}pid(\d+)_")  # fedsm_updates_pid<pid>_<job>_<random>
CLOCK_SLACK_S = 2.0  # psutil's process start times are accurate to about a second


def receiving_cells(engine, job_id: str) -> list:
    """The server cells that decode client results: the engine's cell and, where the job has a cell of
    its own under it (the simulator runs the job as `server.<job_id>` beside the root `server`), that one."""
    cell = engine.get_cell()
    if cell is None:
        return []
    job_cell = CoreCell.ALL_CELLS.get(f"{cell.get_fqcn()}.{job_id}")
    return [cell] + ([job_cell] if job_cell is not None else [])


def spool_owner(folder: Path) -> int | None:
    """The PID of the server that made a spool folder; None for a name of another form."""
    match = _OWNER.match(folder.name)
    return int(match.group(1)) if match else None


def _made_by_running_process(owner: int, changed: float) -> bool:
    """Whether process `owner` runs and is older than a folder last changed at `changed`: a process
    started after that is another one that got the same PID (common in containers)."""
    try:
        return psutil.Process(owner).create_time() <= changed + CLOCK_SLACK_S
    except psutil.Error:
        return False


def stale_spools(directory: str | os.PathLike, started: float) -> list[Path]:
    """Spool folders in `directory` that no server uses: last changed before `started` and named with
    the PID of a server that is gone (or whose PID a newer process holds). Folders without a recorded
    PID are never taken."""
    stale = []
    for folder in Path(directory).glob(f"{SPOOL_PREFIX}pid*_*"):
        owner = spool_owner(folder)
        try:
            changed = folder.lstat().st_mtime
        except OSError:  # removed meanwhile
            continue
        if (owner is not None and folder.is_dir() and not folder.is_symlink()
                and changed < started - CLOCK_SLACK_S and not _made_by_running_process(owner, changed)):
            stale.append(folder)
    return stale


def remove_stale_spools(directory: str | os.PathLike | None = None) -> list[Path]:
    """Remove the spool folders a killed server left in `directory` (default: the temporary directory,
    `TMPDIR`); returns them. Only those older than this process whose server is gone (`stale_spools`)."""
    stale = stale_spools(directory or tempfile.gettempdir(), psutil.Process().create_time())
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    return stale


@contextmanager
def spool_updates_to_disk(cells: list, job_id: str) -> Iterator[str | None]:
    """While active, tensors arriving at `cells` are written to a temporary folder as they stream in
    and read back only when used, so concurrent large uploads are not all held in memory. Yields the
    folder (None without cells); restores the cells' settings and removes the folder on exit. Folders
    left by a server killed mid-run (no exit) are removed on the next start (`remove_stale_spools`)."""
    remove_stale_spools()
    if not cells:
        yield None
        return
    root = tempfile.mkdtemp(prefix=f"{SPOOL_PREFIX}pid{os.getpid()}_{job_id}_")
    previous = [cell.get_fobs_context() for cell in cells]
    try:
        for cell in cells:
            cell.update_fobs_context({FOBSContextKey.TENSOR_DISK_OFFLOAD: True, ROOT_DIR_KEY: root})
        yield root
    finally:
        for cell, context in zip(cells, previous):
            cell.update_fobs_context({key: context.get(key) for key in (FOBSContextKey.TENSOR_DISK_OFFLOAD, ROOT_DIR_KEY)})
        shutil.rmtree(root, ignore_errors=True)
