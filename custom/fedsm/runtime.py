"""Where a process runs: its torch device and CPU threads, and whether it is the NVFlare simulator."""

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
