"""The floor benchmark's datalists, the parts of a round in the server's record, and the timing of the
checkpoint writes they report."""

import importlib.util
import json
import os
import sys
import threading
import time

import pytest

from fedsm.flare.round_costs import PARTS, describe, round_record
from fedsm.io.background_writes import WRITER_NICENESS, BackgroundWrites


def _benchmark():
    spec = importlib.util.spec_from_file_location("benchmark", "tools/benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _items(prefix: str, count: int) -> list[dict[str, str]]:
    return [{"image": f"{prefix}_{i}.png", "label": f"{prefix}_{i}_seg.png"} for i in range(count)]


def test_floor_datalist_keeps_the_first_two_slices_of_each_split_and_other_keys():
    datalist = {"training": _items("t", 5), "validation": _items("v", 3), "testing": _items("s", 2),
                "note": "kept"}
    cut = _benchmark().floor_datalist(datalist)
    assert cut == {"training": _items("t", 2), "validation": _items("v", 2), "testing": _items("s", 2),
                   "note": "kept"}
    assert len(datalist["training"]) == 5  # the given datalist is left as it was
    assert _benchmark().floor_datalist({"training": _items("t", 1), "validation": []}) == {
        "training": _items("t", 1), "validation": []}


def test_floor_overrides_cut_every_client_and_turn_the_test_evaluation_off_unless_set(tmp_path):
    benchmark = _benchmark()
    source = tmp_path / "lists"
    source.mkdir()
    for client in ("a", "b"):
        (source / f"{client}.json").write_text(json.dumps({"training": _items(client, 4),
                                                           "validation": _items(client, 4),
                                                           "testing": _items(client, 4)}))
    overrides = benchmark.floor_overrides({"train.datalist_json_path": str(source)}, tmp_path, tmp_path / "w",
                                          ["a", "b"])
    folder = tmp_path / "w" / "floor_datalists"
    assert overrides == {"train.datalist_json_path": str(folder), "workflow.federated_evaluation": False}
    for client in ("a", "b"):
        cut = json.loads((folder / f"{client}.json").read_text())
        assert {split: len(items) for split, items in cut.items()} == {"training": 2, "validation": 2, "testing": 2}
    kept = benchmark.floor_overrides({"train.datalist_json_path": str(source), "workflow.federated_evaluation": True},
                                     tmp_path, tmp_path / "w", ["a"])
    assert kept["workflow.federated_evaluation"] is True


def _clients(started_at: float) -> dict[str, dict]:
    """Two clients' reports: b pulled its task later, moved slower and decoded slower than a."""
    return {
        "a": {"sent_at": started_at + 0.5, "arrived_at": started_at + 9.0, "down": 2**20, "up": 2**20,
              "seconds": {"validate": 1.0, "train": 2.0, "busy_from": started_at + 2.0, "busy_until": started_at + 5.0,
                          "received": started_at + 1.5, "decode": 0.25, "encode": 0.5,
                          "replied": started_at + 6.0}},
        "b": {"sent_at": started_at + 1.0, "arrived_at": started_at + 10.0, "down": 2**20, "up": 2**20,
              "seconds": {"validate": 1.0, "train": 2.0, "busy_from": started_at + 3.0, "busy_until": started_at + 6.0,
                          "received": started_at + 3.0, "decode": 0.75, "encode": 0.25,
                          "replied": started_at + 7.0}},
    }


def test_a_record_holds_every_part_in_order_the_clients_ones_of_the_slowest():
    started_at = 1.7e9
    server = {"tasks": 0.4, "server_decode": 1.5, "accept": 2.5, "next_set": 0.3, "nan_check": 0.2,
              "server_trim": 0.1, "write_wait": 0.0, "state_write": 4.0}
    record = round_record(1, 12.0, 5.0, _clients(started_at), {"server": {"rss": 2**30, "peak": 2**30}}, server,
                          started_at)
    assert list(record["parts"]) == list(PARTS)
    assert record["parts"] == {"tasks": 0.4, "pulled": 1.0, "down": 2.0, "client_decode": 0.75, "client_encode": 0.5,
                               "up": 3.0, "server_decode": 1.5, "accept": 2.5, "next_set": 0.3, "nan_check": 0.2,
                               "server_trim": 0.1, "write_wait": 0.0, "state_write": 4.0}
    assert record["busy"] == 4.0 and record["communicate"] == 3.0  # the figures before the parts, unchanged
    assert "parts s: tasks 0.40, pulled 1.00, down 2.00," in describe(record)


def test_parts_nothing_measured_are_zero_and_clock_skew_is_never_negative():
    started_at = 1.7e9
    clients = _clients(started_at)
    clients["a"]["seconds"]["received"] = clients["a"]["sent_at"] - 1.0  # a client clock behind the server's
    clients["b"]["seconds"]["received"] = clients["b"]["sent_at"] - 2.0
    record = round_record(0, 12.0, 5.0, clients, {})
    assert record["parts"]["down"] == 0.0
    assert record["parts"]["pulled"] == 0.0 and record["parts"]["tasks"] == 0.0  # no start clock, no workflow parts
    old = round_record(0, 12.0, 5.0, {"a": {"seconds": {"validate": 1.0, "train": 2.0}}}, {})
    assert set(old["parts"].values()) == {0.0}


def test_the_benchmark_prints_the_parts_table_and_reads_records_without_parts(tmp_path):
    benchmark, gib, started_at = _benchmark(), 2**30, 1.7e9
    record = round_record(3, 12.0, 5.0, _clients(started_at), {"server": {"rss": gib, "peak": gib}},
                          {"tasks": 0.4}, started_at)
    records = tmp_path / "round_costs.jsonl"
    older = {key: value for key, value in record.items() if key != "parts"}
    records.write_text(json.dumps(older) + "\n" + json.dumps(record) + "\n")
    report = benchmark.format_report(benchmark.round_costs(records), gib, gib)
    table = report.split("parts of each round, s:\n", 1)[1].splitlines()
    assert table[0].split() == ["round", "tasks", "pulled", "down", "cl.dec", "cl.enc", "up", "sv.dec", "accept",
                                "next", "set", "NaN", "chk", "sv.trim", "wr.wait", "st.write"]
    assert table[2].split() == ["3", "0.40", "1.00", "2.00", "0.75", "0.50", "3.00", *["0.00"] * 7]
    assert not table[3][:5].strip().isdigit()  # one row: the older record has no parts


def test_background_writes_report_how_long_the_writes_they_waited_for_ran():
    writes = BackgroundWrites(timeout_s=10.0)
    try:
        writes.submit(time.sleep, 0.2)
        writes.submit(time.sleep, 0.1)
        assert writes.wait() is None
        assert 0.3 <= writes.written_seconds < 2.0
        writes.submit(_fail)
        assert isinstance(writes.wait(), OSError)
        assert writes.written_seconds == 0.0  # a failed write is reported as the error, not timed
    finally:
        writes.shutdown()


def _fail() -> None:
    raise OSError("disk full")


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values are Linux's")
def test_background_writes_run_at_a_lower_cpu_priority_than_their_caller():
    writes, seen = BackgroundWrites(timeout_s=10.0), []
    writes.submit(lambda: seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
    assert writes.wait() is None
    caller = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert seen == [min(caller + WRITER_NICENESS, 19)]  # 19: the weakest nice value
    writes.shutdown()
