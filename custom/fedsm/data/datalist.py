"""Reading a site's datalist JSON (`training` / `validation` / `testing` lists of image/label pairs)
and checking its PNG files before any work."""

import json
from pathlib import Path

import numpy as np
from PIL import Image

from ..io.progress import progress

SPLITS = ("training", "validation", "testing")
# White of each accepted grey PNG mode: 16-bit images are scaled by 1/65535, the PNG's own full scale
GREY_FULL_SCALE = {"L": 255, "I;16": 65535, "I;16L": 65535, "I;16B": 65535}
MASK_0_255, MASK_0_1, EMPTY = "0_255", "0_1", "empty"


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


def grey_full_scale(mode: str, file: str | Path) -> int:
    """The pixel value of white in a grey image of PIL `mode`; `DataError` naming `file` for any other mode."""
    if mode not in GREY_FULL_SCALE:
        raise DataError(f"{file}: image mode {mode}; expected 8-bit or 16-bit grey ({', '.join(GREY_FULL_SCALE)}). "
                        "Colour images are refused, even with equal channels: convert them to grey first")
    return GREY_FULL_SCALE[mode]


def _read(file: str) -> tuple[str, tuple[int, int], np.ndarray]:
    """Mode, size (width, height) and pixels of an image file, decoded once."""
    try:
        with Image.open(file) as image:
            image.load()
            return image.mode, image.size, np.asarray(image)
    except Exception as error:
        raise DataError(f"unreadable image file {file}: {error}") from error


def mask_kind(pixels: np.ndarray, file: str) -> str:
    """`EMPTY`, `MASK_0_255` or `MASK_0_1` by the values of a mask; `DataError` naming `file` otherwise."""
    values = set(np.unique(pixels).tolist())
    for kind, allowed in ((EMPTY, {0}), (MASK_0_255, {0, 255}), (MASK_0_1, {0, 1})):
        if values <= allowed:
            return kind
    shown = ", ".join(str(value) for value in sorted(values)[:6])
    raise DataError(f"{file}: mask values {shown}{', ...' if len(values) > 6 else ''}; expected {{0, 255}} (or {{0, 1}})")


def check_pair(image_file: str, mask_file: str) -> str:
    """Check one image/mask pair: grey 8/16-bit image, single-channel mask of equal size with values
    {0, 255} or {0, 1}. Returns the mask's kind; raises `DataError` naming the file at fault."""
    mode, image_size, _ = _read(image_file)
    grey_full_scale(mode, image_file)
    mode, mask_size, pixels = _read(mask_file)
    if mode not in GREY_FULL_SCALE:
        raise DataError(f"{mask_file}: mask mode {mode}; expected a single-channel grey mask (L) with values {{0, 255}}")
    if image_size != mask_size:
        raise DataError(f"image {image_file} is {image_size[0]}x{image_size[1]} but its mask {mask_file} is "
                        f"{mask_size[0]}x{mask_size[1]}")
    return mask_kind(pixels, mask_file)


def mask_warnings(items: list[dict[str, str]], kinds: list[str], source: str) -> list[str]:
    """Warnings about accepted but unusual masks; `DataError` when every mask is empty (no Dice)."""
    if items and all(kind == EMPTY for kind in kinds):
        raise DataError(f"{source}: all {len(items)} masks are empty (first: {items[0]['label']}); "
                        "Dice is undefined on a set without foreground")
    warnings = []
    for kind, what in ((MASK_0_1, "use values {0, 1} instead of {0, 255}; they are read as 0/1 masks"),
                       (EMPTY, "are empty; Dice leaves these images out")):
        files = [item["label"] for item, found in zip(items, kinds) if found == kind]
        if files:
            warnings.append(f"{source}: {len(files)} of {len(items)} masks {what} (first: {files[0]})")
    return warnings


def check_images_readable(items: list[dict[str, str]], datalist: str | Path | None = None) -> list[str]:
    """Decode every image and mask once and check each pair (`check_pair`); returns warnings naming
    `datalist` for the caller to log. Raises `DataError` naming the first file at fault."""
    source = str(datalist) if datalist is not None else "datalist"
    pairs = progress(items, desc=f"checking {Path(source).name}", unit="pair", delay=2)  # shown only if slow
    kinds = [check_pair(item["image"], item["label"]) for item in pairs]
    return mask_warnings(items, kinds, source)
