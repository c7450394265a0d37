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
clients); `gpu`: client -> the round's peak torch allocation on its CUDA device in GiB; `parts`: the
round's steps in seconds, in their order (`PARTS`):

- `tasks`: on the server, from `ROUND_STARTED` until the last task is handed to NVFlare: the round's
  sums made ready and each client's task built (its models as DXO parts, large arrays as row-piece
  views). NVFlare serializes a task later, when the client pulls it: that is in `down`.
- `pulled`: from `ROUND_STARTED` until the last client's task has passed the server's task filters,
  which is when NVFlare starts sending it (the clients pull tasks every `task_request_interval`).
- `down`: the slowest client's time from there until the task reaches its learner: NVFlare's
  serialization on the server, the transfer, the deserialization and the task filters on the client.
- `client_decode`: the slowest client's time from the task's arrival in the learner to the decoded
  `FedSMTask` (checks included). A client hands its freed heap back after its reply has left
  (`AFTER_SEND_TASK_RESULT`), off the round's path.
- `client_encode`: the slowest client's time to build its reply (a DXO collection of tensors).
- `up`: the slowest client's time from its reply being built until the server has it before its result
  filters: the client's result filters, NVFlare's serialization, the transfer and the deserialization
  (with `tensor_disk_offload`, spooling to disk) on the server.
- `server_decode`: the server decoding and checking the round's replies, summed over the clients (with
  disk offload it includes reading the arrays back).
- `accept`: the rest of the server's work on those replies as they arrive (norms, bounds, the
  selector's Adam replay, adding to the round's sums), summed over the clients.
- `next_set`: building the next model set from the sums (`FedSMAggregator.aggregate`).
- `nan_check`: checking that set for NaN/Inf and missing arrays.
- `server_trim`: the server handing the round's freed heap back to the system (`release_free_heap`).
- `write_wait`: the round waiting for the checkpoint writes queued before it.
- `state_write`: how long those writes ran on the checkpoint thread (the previous round's model set
  and this round's new best models) while this round went on; the last round's own write is in no
  record.

`down` and `up` compare the server's clock with the client's: one clock in the simulator, synchronized
clocks in a deployment (a negative difference is recorded as 0).
"""

import json
import time
from collections.abc import Mapping
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
PARTS_KEY = "fedsm.round_parts_s"  # the workflow's parts: the server's (tasks, server_decode, accept, ...)
PARTS = ("tasks", "pulled", "down", "client_decode", "client_encode", "up", "server_decode", "accept", "next_set",
         "nan_check", "server_trim", "write_wait", "state_write")
RECORD_FILE = "round_costs.jsonl"

MB, GIB = 1024 * 1024, 1024**3


def round_parts(server: Mapping[str, float], clients: dict[str, dict], started_at: float | None) -> dict[str, float]:
    """The record's `parts` (see the module) from the workflow's (`PARTS_KEY`), what each client
    reported (`seconds`) and the server's clock when the round started and when each client's task
    left (`sent_at`) and its reply arrived (`arrived_at`); 0 for a part nothing measured."""
    reported = [(client, client.get("seconds", {})) for client in clients.values()]
    found = {
        "pulled": [c["sent_at"] - started_at for c, _ in reported if "sent_at" in c and started_at is not None],
        "down": [s["received"] - c["sent_at"] for c, s in reported if "received" in s and "sent_at" in c],
        "client_decode": [s["decode"] for _, s in reported if "decode" in s],
        "client_encode": [s["encode"] for _, s in reported if "encode" in s],
        "up": [c["arrived_at"] - s["replied"] for c, s in reported if "replied" in s and "arrived_at" in c],
    }
    measured = {**server, **{name: max(values, default=0.0) for name, values in found.items()}}
    return {name: round(max(measured.get(name, 0.0), 0.0), 3) for name in PARTS}


def round_record(round_number: int, wall: float, aggregate: float, clients: dict[str, dict],
                 memory: dict[str, dict[str, int]], parts: Mapping[str, float] | None = None,
                 started_at: float | None = None) -> dict:
    """The round's record (see the module) from the workflow's timings (`parts`: its `PARTS_KEY`), what
    each client reported (`seconds`, `down` and `up` bytes, the server's clock at its task and reply),
    each process's memory in bytes and the server's clock at `ROUND_STARTED`."""
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
        "parts": round_parts(parts or {}, clients, started_at),
    }


def describe(record: dict) -> str:
    """The record as one log line."""
    memory = ", ".join(f"{name} {rss:.2f}/{peak:.2f}" for name, (rss, peak) in record["memory"].items())
    gpu = ", ".join(f"{name} {peak:.2f}" for name, peak in record["gpu"].items())
    parts = ", ".join(f"{name} {seconds:.2f}" for name, seconds in record["parts"].items())
    return (f"Round {record['round']} cost: wall {record['wall']:.2f} s, clients busy {record['busy']:.2f} s "
            f"(slowest client validate {record['validate']:.2f} s train {record['train']:.2f} s), aggregate+persist "
            f"{record['aggregate']:.2f} s, communicate {record['communicate']:.2f} s; per client down "
            f"{record['down']:.1f} MB up {record['up']:.1f} MB; parts s: {parts}; memory GiB now/peak: {memory}"
            + (f"; GPU peak GiB: {gpu}" if gpu else ""))


class RoundCosts(FLComponent):
    """Measures the FedSM rounds of the server it runs in (see the module)."""

    def __init__(self):
        super().__init__()
        self._clients: dict[str, dict] = {}
        self._started_at: float | None = None

    def handle_event(self, event_type: str, fl_ctx: FLContext):
        if event_type == ROUND_STARTED:
            self._clients, self._started_at = {}, time.time()
        elif event_type in (EventType.AFTER_TASK_DATA_FILTER, EventType.BEFORE_TASK_RESULT_FILTER):
            now = time.time()
            peer = fl_ctx.get_peer_context()
            client = self._clients.setdefault(peer.get_identity_name() if peer else "?", {})
            if event_type == EventType.AFTER_TASK_DATA_FILTER:
                client["down"], client["sent_at"] = wire_bytes(fl_ctx.get_prop(FLContextKey.TASK_DATA)), now
            else:
                client["arrived_at"] = now
                result = fl_ctx.get_prop(FLContextKey.TASK_RESULT)
                client["up"] = wire_bytes(result)
                client["seconds"], client["memory"] = reply_costs(result)
        elif event_type == ROUND_FINISHED:
            self._finish(fl_ctx)

    def _finish(self, fl_ctx: FLContext) -> None:
        memory = {"server": memory_use(), **{name: c["memory"] for name, c in self._clients.items() if c.get("memory")}}
        record = round_record(fl_ctx.get_prop(ROUND_KEY), fl_ctx.get_prop(WALL_KEY), fl_ctx.get_prop(AGGREGATE_KEY),
                              self._clients, memory, fl_ctx.get_prop(PARTS_KEY), self._started_at)
        with open(Path(fl_ctx.get_prop(FLContextKey.APP_ROOT)) / RECORD_FILE, "a") as records:
            records.write(json.dumps(record) + "\n")
        self.log_info(fl_ctx, describe(record))
