"""The centralized and local baselines compute as the FedSM job they are compared with: with its
`amp` and `channels_last` where these act (CUDA), in float32 elsewhere."""

import logging
from pathlib import Path

import torch

from fedsm.job_config import derive_job
from fedsm.runtime import Compute
from result_stat.baselines import job_compute, read_job

JOB = Path(__file__).resolve().parents[2] / "jobs" / "fedsm_prostate"
CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


def test_the_baselines_take_amp_and_channels_last_from_the_job(tmp_path, caplog):
    switched = read_job(derive_job(JOB, tmp_path / "job", {"train.amp": True, "train.channels_last": True}))
    assert job_compute(switched, CUDA) == Compute(CUDA, amp=True, channels_last=True)
    assert job_compute(read_job(JOB), CUDA) == Compute(CUDA)
    with caplog.at_level(logging.WARNING, logger="fedsm.runtime"):
        assert job_compute(switched, CPU) == Compute(CPU)
    assert caplog.messages == ["config_train.json: 'amp' and 'channels_last' ignored on cpu (CUDA only)"]
