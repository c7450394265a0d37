"""The packaged copy of the code in a job carries its source's digest; a stale copy fails loudly."""

import shutil
from pathlib import Path

import pytest

from fedsm.job_config import SOURCE_RECORD, check_packaged_code, package_code

REPO = Path(__file__).resolve().parents[2]


def source_copy(tmp_path: Path) -> Path:
    """A copy of the repo's `fedsm` package, to package from and then change."""
    source = tmp_path / "src" / "fedsm"
    shutil.copytree(REPO / "custom" / "fedsm", source, ignore=shutil.ignore_patterns("__pycache__"))
    return source


def test_fresh_copy_passes_and_records_its_source(tmp_path):
    source = source_copy(tmp_path)
    packaged = package_code(tmp_path / "job", source)
    assert (packaged / SOURCE_RECORD).is_file() and str(source) in (packaged / SOURCE_RECORD).read_text()
    check_packaged_code(packaged)
    (source / "notes.txt").write_text("not code")  # only code counts
    check_packaged_code(packaged)


@pytest.mark.parametrize("change", ["edit", "add", "remove"])
def test_a_changed_source_makes_the_copy_stale(tmp_path, change):
    source = source_copy(tmp_path)
    packaged = package_code(tmp_path / "job", source)
    target = source / "core" / "soft_pull.py"
    if change == "edit":
        target.write_text(target.read_text() + "\n# changed\n")
    elif change == "add":
        (source / "core" / "new_rule.py").write_text("X = 1\n")
    else:
        target.unlink()
    with pytest.raises(RuntimeError, match="re-run scripts/setup.sh"):
        check_packaged_code(packaged)


def test_a_copy_whose_source_is_elsewhere_passes(tmp_path):
    """On a site that received the job, the source folder does not exist there."""
    source = source_copy(tmp_path)
    packaged = package_code(tmp_path / "job", source)
    shutil.rmtree(source)
    check_packaged_code(packaged)
