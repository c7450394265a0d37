"""Where and how a process runs: its torch device with the `amp` and `channels_last` switches
(`Compute`), its CPU threads, and whether it is the NVFlare simulator."""

import contextlib
import dataclasses
import logging
import os
from typing import TypeVar

import torch

Placeable = TypeVar("Placeable", torch.nn.Module, torch.Tensor)

logger = logging.getLogger(__name__)

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
class Compute:
    """Where and how a process computes: its torch device, and whether `amp` and `channels_last` of
    config_train.json are on there (`compute_for` turns both off outside CUDA)."""

    device: torch.device
    amp: bool = False
    channels_last: bool = False

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context of forward passes: bfloat16 autocast with `amp` (no loss scaling needed), else none."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp else contextlib.nullcontext()

    @property
    def memory_format(self) -> torch.memory_format:
        """The memory format of models and image batches."""
        return torch.channels_last if self.channels_last else torch.preserve_format

    def place(self, tensor_or_module: Placeable) -> Placeable:
        """A module or tensor on this device in this memory format (modules move in place)."""
        return tensor_or_module.to(self.device, memory_format=self.memory_format)

    def __str__(self) -> str:
        """The device, on CUDA with the switches: e.g. `cuda (amp on, channels_last off)`."""
        if self.device.type != "cuda":
            return str(self.device)
        state = {True: "on", False: "off"}
        return f"{self.device} (amp {state[self.amp]}, channels_last {state[self.channels_last]})"


def compute_for(amp: bool, channels_last: bool, device: torch.device | None = None) -> Compute:
    """What this process computes with on `device` (default `choose_device()`) under the configured
    switches; off CUDA both are off, and a warning names those that were on."""
    device = choose_device() if device is None else device
    if device.type == "cuda":
        return Compute(device, amp, channels_last)
    ignored = " and ".join(repr(name) for name, on in (("amp", amp), ("channels_last", channels_last)) if on)
    if ignored:
        logger.warning("config_train.json: %s ignored on %s (CUDA only)", ignored, device.type)
    return Compute(device)
