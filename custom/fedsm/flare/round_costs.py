"""Where each round's time, bytes and memory went: a server component that listens to the round.

The FedSM workflow fires `ROUND_STARTED` and `ROUND_FINISHED` (with its own timings in the event's
context); this component measures every message as it travels (task data after the server's
filters, results before them, with the timings and memory each client reports), then appends one JSON
record per round to `round_costs.jsonl` in the server's app folder (what `tools/benchmark.py`
reads) and logs the same figures as a `Round N cost:` line. Without this component in the server
config, the workflow runs the same and nothing is measured.

A record: `round`; seconds `wall`, `busy` (first client starting validation to last one finishing
training, on the clients' clocks), `validate` and `train` of the slowest client, `aggregate` (the
server's own work on results and the next model set), `communicate` (the rest); the largest `down`
and `up` message per client in MB; `memory`: process -> [RSS now, peak so far] in GiB (server and
clients); `gpu`: client -> the round's peak torch allocation on its CUDA device in GiB.
"""

import json
from pathlib import Path

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext

from ..ops.telemetry import memory_use
from .dxo_codec import wire_bytes
from .messages import reply_costs

ROUND_STARTED = "fedsm.round_started"
ROUND_FINISHED = "fedsm.round_finished"
ROUND_KEY, WALL_KEY, AGGREGATE_KEY = "fedsm.round", "fedsm.round_wall_s", "fedsm.round_aggregate_s"
RECORD_FILE = "round_costs.jsonl"

MB, GIB = 1024 * 1024, 1024**3


def round_record(round_number: int, wall: float, aggregate: float, clients: dict[str, dict],
                 memory: dict[str, dict[str, int]]) -> dict:
    """The round's record (see the module) from the workflow's timings, what each client reported
    (`seconds`, `down` and `up` bytes) and each process's memory in bytes."""
    times = [c.get("seconds", {}) for c in clients.values()]
    slowest = max(times, key=lambda s: s.get("validate", 0) + s.get("train", 0), default={})
    try:
        busy = max(t["busy_until"] for t in times) - min(t["busy_from"] for t in times)
    except (KeyError, ValueError):
        busy = slowest.get("validate", 0.0) + slowest.get("train", 0.0)
    return {
        "round": round_number, "wall": round(wall, 3), "busy": round(busy, 3),
        "validate": round(slowest.get("validate", 0.0), 3), "train": round(slowest.get("train", 0.0), 3),
        "aggregate": round(aggregate, 3), "communicate": round(max(wall - busy - aggregate, 0.0), 3),
        "down": round(max((c.get("down", 0) for c in clients.values()), default=0) / MB, 1),
        "up": round(max((c.get("up", 0) for c in clients.values()), default=0) / MB, 1),
        "memory": {name: [round(m.get("rss", 0) / GIB, 2), round(m.get("peak", 0) / GIB, 2)]
                   for name, m in memory.items()},
        "gpu": {name: round(m["gpu_peak"] / GIB, 2) for name, m in memory.items() if "gpu_peak" in m},
    }


def describe(record: dict) -> str:
    """The record as one log line."""
    memory = ", ".join(f"{name} {rss:.2f}/{peak:.2f}" for name, (rss, peak) in record["memory"].items())
    gpu = ", ".join(f"{name} {peak:.2f}" for name, peak in record["gpu"].items())
    return (f"Round {record['round']} cost: wall {record['wall']:.2f} s, clients busy {record['busy']:.2f} s "
            f"(slowest client validate {record['validate']:.2f} s train {record['train']:.2f} s), aggregate+persist "
            f"{record['aggregate']:.2f} s, communicate {record['communicate']:.2f} s; per client down "
            f"{record['down']:.1f} MB up {record['up']:.1f} MB; memory GiB now/peak: {memory}"
            + (f"; GPU peak GiB: {gpu}" if gpu else ""))


class RoundCosts(FLComponent):
    """Measures the FedSM rounds of the server it runs in (see the module)."""

    def __init__(self):
        super().__init__()
        self._clients: dict[str, dict] = {}

    def handle_event(self, event_type: str, fl_ctx: FLContext):
        if event_type == ROUND_STARTED:
            self._clients = {}
        elif event_type in (EventType.AFTER_TASK_DATA_FILTER, EventType.BEFORE_TASK_RESULT_FILTER):
            peer = fl_ctx.get_peer_context()
            client = self._clients.setdefault(peer.get_identity_name() if peer else "?", {})
            if event_type == EventType.AFTER_TASK_DATA_FILTER:
                client["down"] = wire_bytes(fl_ctx.get_prop(FLContextKey.TASK_DATA))
            else:
                result = fl_ctx.get_prop(FLContextKey.TASK_RESULT)
                client["up"] = wire_bytes(result)
                client["seconds"], client["memory"] = reply_costs(result)
        elif event_type == ROUND_FINISHED:
            self._finish(fl_ctx)

    def _finish(self, fl_ctx: FLContext) -> None:
        memory = {"server": memory_use(), **{name: c["memory"] for name, c in self._clients.items() if c.get("memory")}}
        record = round_record(fl_ctx.get_prop(ROUND_KEY), fl_ctx.get_prop(WALL_KEY), fl_ctx.get_prop(AGGREGATE_KEY),
                              self._clients, memory)
        with open(Path(fl_ctx.get_prop(FLContextKey.APP_ROOT)) / RECORD_FILE, "a") as records:
            records.write(json.dumps(record) + "\n")
        self.log_info(fl_ctx, describe(record))
