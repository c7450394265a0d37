"""Spooling client updates to disk: which server cells get NVFlare's tensor disk offload, and cleanup."""

from pathlib import Path

import pytest
from nvflare.fuel.f3.cellnet.cell import Cell
from nvflare.fuel.utils.fobs import FOBSContextKey

from fedsm.flare.update_spool import ROOT_DIR_KEY, receiving_cells, spool_updates_to_disk


class _Engine:
    def __init__(self, cell):
        self.cell = cell

    def get_cell(self):
        return self.cell


def _cell(fqcn: str) -> Cell:
    return Cell(fqcn=fqcn, root_url="tcp://127.0.0.1:0", secure=False, credentials={}, create_internal_listener=False)


@pytest.fixture(scope="module")
def cells():
    return _cell("server"), _cell("server.spool_job")


def test_the_job_cell_under_the_engine_cell_receives_too(cells):
    server, job = cells
    found = receiving_cells(_Engine(server), "spool_job")
    assert [cell.get_fqcn() for cell in found] == ["server", "server.spool_job"]
    assert [cell.get_fqcn() for cell in receiving_cells(_Engine(server), "other_job")] == ["server"]
    assert receiving_cells(_Engine(None), "spool_job") == []


def test_offload_is_on_inside_and_restored_with_its_folder_removed_after(cells):
    found = receiving_cells(_Engine(cells[0]), "spool_job")
    with spool_updates_to_disk(found, "spool_job") as folder:
        assert Path(folder).is_dir()
        for cell in found:
            context = cell.get_fobs_context()
            assert context[FOBSContextKey.TENSOR_DISK_OFFLOAD] is True and context[ROOT_DIR_KEY] == folder
        (Path(folder) / "update.safetensors").write_bytes(b"x")
    assert not Path(folder).exists()
    for cell in found:
        assert not cell.get_fobs_context().get(FOBSContextKey.TENSOR_DISK_OFFLOAD)


def test_without_cells_nothing_is_spooled():
    with spool_updates_to_disk([], "spool_job") as folder:
        assert folder is None
