"""Where a process runs: its torch device and CPU threads, and whether it is the NVFlare simulator."""

import contextlib
import dataclasses
import os

import torch

SIMULATOR_JOB_ID = "simulate_job"  # the job id NVFlare's simulator gives every run


def choose_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_threads(configured: int, clients_on_this_host: int) -> int:
    """Torch threads per client: the configured number, or (0 = auto) the cores shared among the
    clients that run on this host, so that simulator clients do not oversubscribe the CPU."""
    if configured > 0:
        return configured
    return max(1, (os.cpu_count() or 1) // max(1, clients_on_this_host))


@dataclasses.dataclass(frozen=True)
class GpuOptions:
    """What `amp` and `channels_last` of config_train.json turn on; both act on CUDA only (`gpu_options`)."""

    amp: bool = False
    channels_last: bool = False

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context of forward passes: bfloat16 autocast with `amp` (no loss scaling needed), else none."""
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else contextlib.nullcontext()

    @property
    def memory_format(self) -> torch.memory_format:
        """The memory format of models and image batches."""
        return torch.channels_last if self.channels_last else torch.preserve_format


def gpu_options(amp: bool, channels_last: bool, device: torch.device) -> tuple[GpuOptions, str | None]:
    """The options in effect on `device`, and, where configured ones are ignored (off CUDA), why."""
    if device.type == "cuda":
        return GpuOptions(amp, channels_last), None
    ignored = " and ".join(repr(name) for name, on in (("amp", amp), ("channels_last", channels_last)) if on)
    return GpuOptions(), f"config_train.json: {ignored} ignored on {device.type} (CUDA only)" if ignored else None
