import json

import pytest
from PIL import Image

from fedsm.data.datalist import DataError, check_images_readable, load_datalist


def _dataset(tmp_path):
    base = tmp_path / "ds"
    (base / "s" / "c").mkdir(parents=True)
    for name in ("img.png", "mask.png"):
        Image.new("L", (8, 8)).save(base / "s" / "c" / name)
    item = {"image": "s/c/img.png", "label": "s/c/mask.png"}
    datalist = tmp_path / "client_s.json"
    datalist.write_text(json.dumps({"training": [item], "validation": [item], "testing": []}))
    return base, datalist


def test_load_datalist_resolves_paths(tmp_path):
    base, datalist = _dataset(tmp_path)
    loaded = load_datalist(datalist, base)
    assert loaded["training"][0]["image"] == str(base / "s/c/img.png") and loaded["testing"] == []


def test_missing_or_malformed_datalist_names_the_file(tmp_path):
    base, datalist = _dataset(tmp_path)
    with pytest.raises(DataError, match="client_x.json"):
        load_datalist(tmp_path / "client_x.json", base)
    datalist.write_text("[1, 2")
    with pytest.raises(DataError, match="client_s.json: not a readable JSON"):
        load_datalist(datalist, base)
    datalist.write_text(json.dumps({"training": [{"image": "s/c/img.png"}], "validation": [], "testing": []}))
    with pytest.raises(DataError, match=r"'training'\[0\] must be an object"):
        load_datalist(datalist, base)


def test_missing_image_and_unreadable_image_name_the_file(tmp_path):
    base, datalist = _dataset(tmp_path)
    (base / "s/c/mask.png").unlink()
    with pytest.raises(DataError, match="label file not found: .*mask.png"):
        load_datalist(datalist, base)
    (base / "s/c/mask.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    loaded = load_datalist(datalist, base)
    with pytest.raises(DataError, match="unreadable image file .*mask.png"):
        check_images_readable(loaded["training"])
