"""Package the job's code into a job folder, and derive jobs with some settings changed.

NVFlare 2.9 builds only allow-listed component classes unless a job brings its own code (BYOC) in
`app/custom`. `package_code` copies this `fedsm` package there as real files (a symlink is not
carried by NVFlare's job packaging), so the job runs in the simulator and in POC as it is.

Derive a job (CPU demo, tests, benchmarks):

    python -m fedsm.job_config jobs/fedsm_prostate /tmp/fedsm_cpu --set train.image_size=64 \
        --set server.num_rounds=5 --set train.selector='"light"'

A FedSM job is built by `fedsm.recipe.FedSMRecipe`: the source folder's settings, then the `--set`
settings, are its typed arguments, checked before anything is written (`FedSMRecipe.from_settings`):
`train.KEY` a key of config_train.json, `workflow.KEY` an argument of the FedSM workflow,
`server.num_rounds`, `server.soft_pull_lambda`, `server.resume_from`, `server.keep_states`,
`meta.name` and `meta.min_clients`. Values are JSON; a bare word is taken as a string. The FedAvg
baseline job, which has no recipe, is copied with the settings written into its files (`train.KEY`,
`server.KEY` a top-level variable of its server config, `meta.KEY`).
`--quantize float16` adds NVFlare's quantization filters both ways.
"""

import argparse
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from .io.atomic import write_text_atomic

CONFIG_FILES = {
    "train": "app/config/config_train.json",
    "server": "app/config/config_fed_server.json",
    "workflow": "app/config/config_fed_server.json",
    "meta": "meta.json",
}
BASELINE_CONFIG_FILES = {section: CONFIG_FILES[section] for section in ("train", "server", "meta")}


SOURCE_RECORD = "PACKAGED_FROM.json"  # in a packaged copy: the source folder and the digest of its code


def source_digest(package: Path) -> str:
    """SHA-256 over the relative paths and contents of every `.py` file of a package folder."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def package_code(job_dir: str | Path, source: Path | None = None) -> Path:
    """Copy the `fedsm` package (or the package folder `source`) into `<job_dir>/app/custom/fedsm`
    (replacing an older copy), with a record of where it came from and the digest of its code (see
    `check_packaged_code`)."""
    source = (source or Path(__file__).parent).resolve()
    target = Path(job_dir) / "app" / "custom" / "fedsm"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", SOURCE_RECORD))
    record = {"source": str(source), "sha256": source_digest(target)}
    write_text_atomic(target / SOURCE_RECORD, json.dumps(record, indent=2) + "\n")
    return target


def check_packaged_code(package: Path) -> None:
    """Raise when `package` is a packaged copy whose source folder (on this machine) changed since it was
    packaged, so that a job never silently runs old code; a copy without a reachable source passes."""
    record_file = package / SOURCE_RECORD
    if not record_file.is_file():
        return
    record = json.loads(record_file.read_text())
    source = Path(record["source"])
    if source.resolve() == package.resolve() or not source.is_dir():
        return
    if source_digest(source) != record["sha256"]:
        raise RuntimeError(f"the job's copy of the FedSM code ({package}) is older than {source}: "
                           "re-run scripts/setup.sh (or `python -m fedsm.job_config <job>`) to package it again")


FEDSM_WORKFLOW = "fedsm.flare.workflow.FedSMController"


def is_fedsm_job(job_dir: Path) -> bool:
    """Whether the server config of the job folder `job_dir` runs the FedSM workflow."""
    try:
        server = json.loads((job_dir / CONFIG_FILES["server"]).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return any(workflow.get("path") == FEDSM_WORKFLOW for workflow in server.get("workflows", []))


def derive_job(source: str | Path, destination: str | Path, overrides: dict[str, Any]) -> Path:
    """Write into `destination` (replaced if it exists) the job folder `source` with `{"section.key": value}`
    overrides: a FedSM job through `FedSMRecipe`, the FedAvg baseline job as a patched copy."""
    source, destination = Path(source), Path(destination)
    if not (source / "meta.json").is_file():
        raise FileNotFoundError(f"{source} is not an NVFlare job folder (no meta.json)")
    if is_fedsm_job(source):
        return recipe_of(source, overrides).write_job(destination)
    return _derive_baseline_job(source, destination, overrides)


def recipe_of(job_dir: Path, overrides: dict[str, Any]):
    """The `FedSMRecipe` of the FedSM job folder `job_dir` with `overrides`; an error when the folder holds
    what the recipe's arguments do not make (a component or filter added by hand), which would be lost."""
    from .recipe import FedSMRecipe  # the recipe builds the workflow, which imports this module

    differing = FedSMRecipe.from_settings({}, job_dir=job_dir).files_differing_from(job_dir)
    if differing:
        raise ValueError(f"{job_dir}: {differing} hold what FedSMRecipe's arguments do not make; derive from a job "
                         "folder the recipe wrote, and add components or filters through the recipe")
    return FedSMRecipe.from_settings(overrides, job_dir=job_dir)


def _set(config: dict, key: str, value: Any, file: Path) -> None:
    if key not in config:
        raise KeyError(f"{file}: has no key '{key}'")
    config[key] = value


def _derive_baseline_job(source: Path, destination: Path, overrides: dict[str, Any]) -> Path:
    """Copy the FedAvg baseline job `source` to `destination`, write the overrides into its files and
    package the code."""
    if destination.exists():
        shutil.rmtree(destination)
    shutil.copytree(source, destination, ignore=shutil.ignore_patterns("__pycache__"))
    package_code(destination)
    by_file: dict[str, list[tuple[str, Any]]] = {}
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        if section not in BASELINE_CONFIG_FILES or not key:
            raise ValueError(f"override '{dotted}' must be <section>.<key> with section in "
                             f"{sorted(BASELINE_CONFIG_FILES)}")
        by_file.setdefault(BASELINE_CONFIG_FILES[section], []).append((key, value))
    for relative, changes in by_file.items():
        file = destination / relative
        config = json.loads(file.read_text())
        for key, value in changes:
            _set(config, key, value, file)
        write_text_atomic(file, json.dumps(config, indent=2) + "\n")
    return destination


QUANTIZER = "nvflare.app_opt.pt.quantization.quantizer.ModelQuantizer"


def add_quantization(job_dir: str | Path, quantization_type: str) -> None:
    """Write the FedSM job `job_dir` again through its recipe with NVFlare's stock quantization both ways, as
    the README documents it (`FedSMRecipe.add_quantization`)."""
    job_dir = Path(job_dir)
    recipe = recipe_of(job_dir, {})
    recipe.add_quantization(quantization_type)
    recipe.write_job(job_dir)


def parse_override(text: str) -> tuple[str, Any]:
    """`section.key=value` with a JSON value (a bare word is a string)."""
    dotted, sep, raw = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"'{text}' is not section.key=value")
    try:
        return dotted, json.loads(raw)
    except json.JSONDecodeError:
        return dotted, raw


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="job folder to start from, e.g. jobs/fedsm_prostate")
    parser.add_argument("destination", nargs="?",
                        help="folder of the derived job (replaced if it exists); without it, only package the "
                             "code into the source job")
    parser.add_argument("--set", dest="overrides", action="append", type=parse_override, default=[],
                        metavar="SECTION.KEY=VALUE")
    parser.add_argument("--quantize", choices=["float16", "blockwise8", "adaquant"],
                        help="add NVFlare's ModelQuantizer/ModelDequantizer both ways (blockwise8 needs CUDA)")
    args = parser.parse_args(argv)
    if args.destination is None:
        if args.overrides or args.quantize:
            parser.error("--set and --quantize need a destination folder; the source job is never changed")
        print(package_code(args.source))
    else:
        job = derive_job(args.source, args.destination, dict(args.overrides))
        if args.quantize:
            add_quantization(job, args.quantize)
        print(job)


if __name__ == "__main__":
    main()
