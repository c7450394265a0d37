"""`HeapTrimmer`: the heap-trimming thread (`fedsm.ops.heap.keep_heap_trimmed`) as an opt-in component.

Listed in a job's server and client configs (the shipped job lists it: on 2 CPU cores it kept each
process's RSS from growing by the bytes it had just moved; docs/performance.md), it starts the thread
when the run starts. Leave it out of a config to run without it.
"""

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_context import FLContext

from ..ops.heap import keep_heap_trimmed


class HeapTrimmer(FLComponent):
    def __init__(self, interval_s: float = 1.0):
        super().__init__()
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.interval_s = interval_s

    def handle_event(self, event_type: str, fl_ctx: FLContext):
        if event_type == EventType.START_RUN:
            keep_heap_trimmed(self.interval_s)
