"""Finding the app folders of a finished FedSM run.

Layouts understood:
- NVFlare simulator workspace: `<ws>/server/simulate_job/app_server` and one
  `<ws>/<client>/simulate_job/app_<client>` per client;
- POC / production site folders: `<site>/<job_id>/app_<site>` (the server's is `app_server`), and a
  job downloaded with the admin console (`<download>/<job_id>/workspace/app_server`);
- a folder that already is an app folder (holds `config/config_fed_server.json`, or is named
  `app_<client>`).
"""

import logging
from pathlib import Path

SERVER_SITE = "server"
SIMULATOR_JOB = "simulate_job"
APP_PREFIX = "app_"
SERVER_CONFIG = Path("config") / "config_fed_server.json"
TRAIN_CONFIG = Path("config") / "config_train.json"
EVENT_FILE_GLOB = "events.out.tfevents.*"

_SEARCH_DEPTH = 4

logger = logging.getLogger(__name__)


def is_app_folder(path: Path) -> bool:
    """True for an NVFlare app folder (it holds `config/config_fed_server.json`)."""
    return (Path(path) / SERVER_CONFIG).is_file()


def find_server_app(path: str | Path) -> Path:
    """The server app folder of the run at `path` (an app folder, a simulator workspace, a POC server
    folder or a downloaded job). Raises `FileNotFoundError` saying what was searched."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"folder not found: {path}")
    if is_app_folder(path):
        return path
    simulator = path / SERVER_SITE / SIMULATOR_JOB / f"{APP_PREFIX}{SERVER_SITE}"
    if is_app_folder(simulator):
        return simulator
    found = []
    for depth in range(_SEARCH_DEPTH):
        pattern = "/".join(["*"] * depth + [f"{APP_PREFIX}{SERVER_SITE}"])
        found += [candidate for candidate in sorted(path.glob(pattern)) if is_app_folder(candidate)]
    if len(found) == 1:
        return found[0]
    if found:
        listed = "\n  ".join(str(candidate) for candidate in found)
        raise FileNotFoundError(f"{path} holds several server app folders; pass one of them:\n  {listed}")
    raise FileNotFoundError(
        f"no server app folder under {path}: expected {simulator} (simulator workspace) or a folder "
        f"holding {SERVER_CONFIG}"
    )


def _newest(folders: list[Path]) -> Path:
    return max(folders, key=lambda folder: folder.stat().st_mtime)


def find_client_apps(path: str | Path) -> dict[str, Path]:
    """Client name -> client app folder of the run at `path`, sorted by name; empty when none.

    `path` is a simulator workspace or POC folder (`<path>/<client>/<job>/app_<client>`; the
    simulator's job folder `simulate_job` is preferred, else the newest job folder), or a client app
    folder itself (`app_<client>`).
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"folder not found: {path}")
    if path.name.startswith(APP_PREFIX) and path.name != f"{APP_PREFIX}{SERVER_SITE}":
        return {path.name[len(APP_PREFIX):]: path}
    apps = {}
    for site in sorted(child for child in path.iterdir() if child.is_dir() and child.name != SERVER_SITE):
        app_name = f"{APP_PREFIX}{site.name}"
        simulator = site / SIMULATOR_JOB / app_name
        if simulator.is_dir():
            apps[site.name] = simulator
            continue
        candidates = [folder for folder in site.glob(f"*/{app_name}") if folder.is_dir()]
        if candidates:
            apps[site.name] = _newest(candidates)
            if len(candidates) > 1:
                logger.warning("%s holds %d jobs; using the newest: %s", site, len(candidates), apps[site.name])
    return apps


def event_files(folder: str | Path) -> list[Path]:
    """The TensorBoard event files directly in `folder`, sorted by name."""
    return sorted(file for file in Path(folder).glob(EVENT_FILE_GLOB) if file.is_file())


def find_event_dirs(path: str | Path) -> dict[str, Path]:
    """Site name -> folder of that site's TensorBoard event files in the run at `path`.

    The client app folders of the run come first; when none of them holds event files, any folder
    under `path` holding event files is taken (named after the folder, without its `app_` prefix).
    Raises `FileNotFoundError` naming `path` when there are no event files at all.
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"workspace folder not found: {path}")
    dirs = {site: app for site, app in find_client_apps(path).items() if event_files(app)}
    if not dirs:
        for folder in sorted({file.parent for file in path.rglob(EVENT_FILE_GLOB) if file.is_file()}):
            name = folder.name[len(APP_PREFIX):] if folder.name.startswith(APP_PREFIX) else folder.name
            if folder == path or name in dirs:
                name = str(folder.relative_to(path.parent))
            dirs[name] = folder
    if not dirs:
        raise FileNotFoundError(f"no TensorBoard event files ({EVENT_FILE_GLOB}) found under {path}")
    return dirs
