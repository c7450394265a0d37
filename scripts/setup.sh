#!/usr/bin/env bash
# Set-up: a virtual environment with pinned dependencies, this package, and the job's code packaged
# into jobs/fedsm_prostate/app/custom. Re-running is cheap (pip skips what is installed).
#
# torch: requirements.txt pins torch==2.13.0. From PyPI on Linux that is the CUDA build (GPU users
# get it with no extra step); where pip's find-links offer the CPU wheel torch-2.13.0+cpu (as on our
# CI machines) pip takes that one, with no multi-GB download. To force another build, set
# FEDSM_TORCH_INDEX_URL, e.g. https://download.pytorch.org/whl/cpu or .../whl/cu128.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${FEDSM_VENV:-.venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating virtual environment $venv"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
if [ -n "${FEDSM_TORCH_INDEX_URL:-}" ]; then
  echo "[setup] installing torch==2.13.0 from $FEDSM_TORCH_INDEX_URL"
  "${pip[@]}" --index-url "$FEDSM_TORCH_INDEX_URL" torch==2.13.0
fi
echo "[setup] installing requirements (nvflare, torch, monai, ...)"
"${pip[@]}" -r requirements.txt -r requirements-test.txt
"${pip[@]}" --no-deps --no-build-isolation -e .
"$venv/bin/python" -m fedsm.job_config jobs/fedsm_prostate >/dev/null
"$venv/bin/python" -m result_stat.fedavg_job jobs/fedavg_prostate >/dev/null
"$venv/bin/python" - <<'PY'
import torch, nvflare, monai
device = "CUDA " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
print(f"[setup] ready: torch {torch.__version__} ({device}), nvflare {nvflare.__version__}, monai {monai.__version__}")
PY
