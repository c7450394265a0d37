"""Spool incoming client updates to disk: NVFlare's tensor disk offload, on the cells that receive them."""

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from nvflare.fuel.f3.cellnet.core_cell import CoreCell
from nvflare.fuel.utils.fobs import FOBSContextKey

ROOT_DIR_KEY = "tensor_disk_offload_root_dir"  # the FOBS context key NVFlare's tensor decomposer reads


def receiving_cells(engine, job_id: str) -> list:
    """The server cells that decode client results: the engine's cell and, where the job has a cell of
    its own under it (the simulator runs the job as `server.<job_id>` beside the root `server`), that one."""
    cell = engine.get_cell()
    if cell is None:
        return []
    job_cell = CoreCell.ALL_CELLS.get(f"{cell.get_fqcn()}.{job_id}")
    return [cell] + ([job_cell] if job_cell is not None else [])


@contextmanager
def spool_updates_to_disk(cells: list, job_id: str) -> Iterator[str | None]:
    """While active, tensors arriving at `cells` are written to a temporary folder as they stream in
    and read back only when used, so concurrent large uploads are not all held in memory. Yields the
    folder (None without cells); restores the cells' settings and removes the folder on exit."""
    if not cells:
        yield None
        return
    root = tempfile.mkdtemp(prefix=f"fedsm_updates_{job_id}_")
    previous = [cell.get_fobs_context() for cell in cells]
    try:
        for cell in cells:
            cell.update_fobs_context({FOBSContextKey.TENSOR_DISK_OFFLOAD: True, ROOT_DIR_KEY: root})
        yield root
    finally:
        for cell, context in zip(cells, previous):
            cell.update_fobs_context({key: context.get(key) for key in (FOBSContextKey.TENSOR_DISK_OFFLOAD, ROOT_DIR_KEY)})
        shutil.rmtree(root, ignore_errors=True)
