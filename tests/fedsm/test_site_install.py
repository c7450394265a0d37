"""A training site installs the core requirements only: ranges, nothing that only data preparation,
the quantization filters or the tests need, and everything the site's code imports."""

import ast
import subprocess
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib")

REPO = Path(__file__).resolve().parents[2]
ROOTS = {"fedsm": REPO / "custom" / "fedsm", "fedsm_baselines": REPO / "custom" / "fedsm_baselines",
         "result_stat": REPO / "result_stat"}
# What a site runs: the job's components (all of custom/ travels with a job), the FedAvg baseline,
# test evaluation and curves. The rest of result_stat (baselines, gap study) runs offline.
SITE_MODULES = [
    "fedsm.flare.learner", "fedsm.flare.workflow", "fedsm.flare.persistor", "fedsm.flare.aggregator",
    "fedsm_baselines.fedavg_executor", "result_stat.prostate_2d_test_only", "result_stat.plot_tensorboard_events",
]
# Installed only for data preparation, the quantization filters, the gap study and the tests.
NOT_ON_A_SITE = {"SimpleITK": "simpleitk", "pydicom": "pydicom", "highdicom": "highdicom", "nibabel": "nibabel",
                 "bitsandbytes": "bitsandbytes", "scipy": "scipy", "nrrd": "pynrrd", "pytest": "pytest"}


def requirement_lines(text: str) -> list[Requirement]:
    return [Requirement(line) for line in map(str.strip, text.splitlines()) if line and not line.startswith("#")]


def core() -> list[Requirement]:
    return requirement_lines((REPO / "requirements.txt").read_text())


def extras() -> dict[str, list[Requirement]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {name: [Requirement(item) for item in items] for name, items in project["optional-dependencies"].items()}


def pins() -> dict[str, str]:
    pinned = {}
    for requirement in requirement_lines((REPO / "constraints.txt").read_text()):
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", f"constraints.txt: {requirement} is not an exact pin"
        pinned[canonicalize_name(requirement.name)] = specifier.version
    return pinned


def test_core_requirements_are_ranges_without_prep_quant_or_test_packages():
    names = {canonicalize_name(r.name) for r in core()}
    assert {"nvflare", "torch", "monai"} <= names
    assert not names & set(NOT_ON_A_SITE.values())
    for requirement in core():
        assert all(s.operator not in ("==", "===") for s in requirement.specifier), \
            f"requirements.txt pins {requirement}; exact versions belong in constraints.txt"


def test_extras_split_prep_quant_study_and_test():
    groups = {name: {canonicalize_name(r.name) for r in items} for name, items in extras().items()}
    assert {"simpleitk", "pydicom", "highdicom"} <= groups["prep"]
    assert groups["quant"] == {"bitsandbytes"}
    assert groups["study"] == {"scipy"}
    (self_reference,) = [r for r in extras()["test"] if canonicalize_name(r.name) == "fedsm-nvflare"]
    assert self_reference.extras == set(groups) - {"test"}, "[test] must hold every other extra"
    assert {"pytest", "pynrrd"} <= groups["test"]


def test_every_requirement_is_pinned_within_its_range():
    pinned = pins()
    for requirement in core() + [r for items in extras().values() for r in items]:
        name = canonicalize_name(requirement.name)
        if name == "fedsm-nvflare":
            continue
        assert name in pinned, f"{requirement.name} has no pin in constraints.txt"
        assert requirement.specifier.contains(pinned[name], prereleases=True), \
            f"constraints.txt pins {name}=={pinned[name]}, outside {requirement}"


def module_file(name: str) -> Path | None:
    root, *parts = name.split(".")
    base = ROOTS[root].joinpath(*parts)
    return next((f for f in (base.with_suffix(".py"), base / "__init__.py") if f.is_file()), None)


def imported(path: Path) -> set[str]:
    """Absolute imports of a file, function-local ones included, as dotted names (`from a import b`
    gives `a` and `a.b`, since b may be a module)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def site_files() -> set[Path]:
    """All of custom/, and every first-party module (packages' __init__ included) that the site's
    modules import, transitively."""
    queue = [f for root in ("fedsm", "fedsm_baselines") for f in ROOTS[root].rglob("*.py")]
    queue += [module_file(name) for name in SITE_MODULES]
    files = set()
    while queue:
        path = queue.pop()
        if path is not None and path not in files:
            files.add(path)
            parts = [name.split(".") for name in imported(path)]
            queue += [module_file(".".join(p[:i])) for p in parts if p[0] in ROOTS for i in range(1, len(p) + 1)]
    return files


def test_site_code_imports_only_core_requirements():
    """Every third-party package that a site's code imports is a core requirement."""
    allowed = {canonicalize_name(r.name) for r in core()}
    distributions = packages_distributions()
    missing = {}
    for path in sorted(site_files()):
        for name in {name.split(".")[0] for name in imported(path)} - set(ROOTS) - set(sys.stdlib_module_names):
            if not {canonicalize_name(d) for d in distributions.get(name, [name])} & allowed:
                missing.setdefault(name, []).append(str(path.relative_to(REPO)))
    assert not missing, f"imported by a site's code but not in requirements.txt: {missing}"


def test_site_modules_load_without_the_extras():
    """With the extras' packages made unimportable, as on a site that installed the core only, the
    job's components and the evaluation code still load."""
    probe = f"""
import importlib, importlib.abc, sys
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {sorted(NOT_ON_A_SITE)!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Absent())
for name in {SITE_MODULES!r}:
    importlib.import_module(name)
"""
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
