"""Reading a site's datalist JSON: `training` / `validation` / `testing` lists of image/label pairs."""

import json
from pathlib import Path

from PIL import Image

SPLITS = ("training", "validation", "testing")


class DataError(ValueError):
    """Bad input data; the message names the file at fault."""


def datalist_file(datalist_dir: str | Path, client_name: str) -> Path:
    """The datalist of a client: `<datalist_dir>/<client_name>.json` (e.g. `client_MSD.json`)."""
    return Path(datalist_dir) / f"{client_name}.json"


def load_datalist(path: str | Path, base_dir: str | Path, splits=SPLITS) -> dict[str, list[dict[str, str]]]:
    """The requested splits of a datalist, with absolute image/label paths under `base_dir`.

    Raises `DataError` naming the datalist for a missing or malformed file and naming the first
    missing image or label file, so a client fails before any training.
    """
    path, base_dir = Path(path), Path(base_dir)
    if not path.is_file():
        raise DataError(f"datalist not found: {path}")
    try:
        content = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: not a readable JSON datalist: {error}") from error
    if not isinstance(content, dict):
        raise DataError(f"{path}: expected a JSON object with keys {list(SPLITS)}")
    if not base_dir.is_dir():
        raise DataError(f"dataset_base_dir not found: {base_dir} (datalist {path})")
    result = {}
    for split in splits:
        items = content.get(split)
        if not isinstance(items, list):
            raise DataError(f"{path}: missing list '{split}'")
        resolved = []
        for index, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get("image"), str) or not isinstance(item.get("label"), str):
                raise DataError(f"{path}: '{split}'[{index}] must be an object with string 'image' and 'label'")
            pair = {key: str(base_dir / item[key]) for key in ("image", "label")}
            for key, file in pair.items():
                if not Path(file).is_file():
                    raise DataError(f"{path}: '{split}'[{index}] {key} file not found: {file}")
            resolved.append(pair)
        result[split] = resolved
    return result


def check_images_readable(items: list[dict[str, str]]) -> None:
    """Open every image and label header; raise `DataError` naming the first unreadable file."""
    for item in items:
        for file in (item["image"], item["label"]):
            try:
                with Image.open(file) as image:
                    image.verify()
            except Exception as error:
                raise DataError(f"unreadable image file {file}: {error}") from error
