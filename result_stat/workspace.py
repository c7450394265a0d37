"""Finding the app folders and the curves of a finished FedSM run.

Layouts understood:
- NVFlare simulator workspace: `<ws>/server/simulate_job/app_server` and one
  `<ws>/<client>/simulate_job/app_<client>` per client;
- POC / production site folders: `<site>/<job_id>/app_<site>` (the server's is `app_server`), and a
  job downloaded with the admin console (`<download>/<job_id>/workspace/app_server`);
- a folder that already is an app folder (holds `config/config_fed_server.json`, or is named
  `app_<client>`).

The curves of every site are in the server's job workspace, beside `app_server`: the job's
TensorBoard receiver writes `tb_events/<site>/` there (`<ws>/server/simulate_job/tb_events/<site>` in
the simulator, `<download>/<job_id>/workspace/tb_events/<site>` in a downloaded job). A site that sets
`local_tensorboard` also writes its own into its app folder.
"""

import logging
from pathlib import Path

SERVER_SITE = "server"
SIMULATOR_JOB = "simulate_job"
APP_PREFIX = "app_"
SERVER_CONFIG = Path("config") / "config_fed_server.json"
TRAIN_CONFIG = Path("config") / "config_train.json"
EVENT_FILE_GLOB = "events.out.tfevents.*"
TRACKING_FOLDER = "tb_events"  # `tb_folder` of the server's TBAnalyticsReceiver in the job configs

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


def _tracked_sites(tracking: Path) -> dict[str, Path]:
    return {folder.name: folder for folder in sorted(tracking.iterdir()) if folder.is_dir() and event_files(folder)}


def find_tracking_sites(path: str | Path) -> dict[str, Path]:
    """Site name -> that site's folder in the server's experiment tracking (`tb_events/<site>`) of the
    run at `path`, sorted by name; empty when the run has none.

    `path` is the tracking folder itself, or a folder holding it up to a few levels down: the server's
    job workspace, a simulator workspace, a downloaded job, a POC workspace (of several jobs, the
    newest is taken).
    """
    path = Path(path).expanduser()
    found = []
    for depth in range(_SEARCH_DEPTH):
        pattern = "/".join(["*"] * depth + [TRACKING_FOLDER])
        found += [folder for folder in sorted(path.glob(pattern)) if folder.is_dir() and _tracked_sites(folder)]
    if path.name == TRACKING_FOLDER and _tracked_sites(path):
        found.append(path)
    if not found:
        return {}
    tracking = _newest(found)
    if len(found) > 1:
        logger.warning("%s holds %d tracking folders; using the newest: %s", path, len(found), tracking)
    return _tracked_sites(tracking)


def find_event_dirs(path: str | Path) -> dict[str, Path]:
    """Site name -> folder of that site's TensorBoard event files in the run at `path`.

    The server's tracking folder comes first (`find_tracking_sites`: every site's curves in one
    place), then the client app folders of the run; when neither holds event files, any folder under
    `path` holding event files is taken (named after the folder, without its `app_` prefix). Raises
    `FileNotFoundError` naming `path` when there are no event files at all.
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"workspace folder not found: {path}")
    dirs = find_tracking_sites(path)
    if dirs:
        return dirs
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
