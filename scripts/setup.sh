#!/usr/bin/env bash
# Run by: users (and scripts/test.sh, CI), once after cloning; re-running is cheap.
# Set-up: a virtual environment with this package and all its extras ([test] holds [prep] and
# [quant]) at the versions pinned in constraints.txt, and the job's code packaged into
# jobs/fedsm_prostate/app/custom. Re-running is cheap (pip skips what is installed).
#
# torch: the build follows the machine. Where nvidia-smi lists a GPU, PyPI's CUDA build; else the
# CPU build, taken from pip's find-links when they hold it (as on our CI machines, no download), else
# from https://download.pytorch.org/whl/cpu. FEDSM_TORCH_INDEX_URL adds another index whose labelled
# build wins, e.g. https://download.pytorch.org/whl/cu126 for a driver too old for PyPI's CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${FEDSM_VENV:-.venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating virtual environment $venv"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --disable-pip-version-check -c constraints.txt)
# setuptools first: the editable install below builds without isolation, with the venv's own.
"${pip[@]}" --quiet setuptools
torch_pin=$(sed -n 's/^torch==//p' constraints.txt)
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null) || gpu=""
gpu=${gpu%%$'\n'*}
no_gpu="no NVIDIA GPU (nvidia-smi is missing, fails or lists none)"

# Not --quiet: a CUDA build with its libraries is several GB, and pip shows each download's progress.
if [ -n "${FEDSM_TORCH_INDEX_URL:-}" ]; then
  echo "[setup] torch $torch_pin from $FEDSM_TORCH_INDEX_URL: FEDSM_TORCH_INDEX_URL is set"
  # --upgrade: replace an installed build of the same version (PyTorch labels builds, 2.13.0+cu126 > 2.13.0+cpu)
  "${pip[@]}" --upgrade --extra-index-url "$FEDSM_TORCH_INDEX_URL" torch
elif [ -n "$gpu" ]; then
  echo "[setup] torch $torch_pin, CUDA build from PyPI: nvidia-smi lists $gpu"
  "${pip[@]}" "torch!=$torch_pin+cpu"
elif "${pip[@]}" --quiet --no-index --no-deps "torch==$torch_pin+cpu" 2>/dev/null; then
  echo "[setup] torch $torch_pin, CPU build from pip's find-links: $no_gpu"
else
  echo "[setup] torch $torch_pin, CPU build from https://download.pytorch.org/whl/cpu: $no_gpu"
  "${pip[@]}" --extra-index-url https://download.pytorch.org/whl/cpu "torch==$torch_pin+cpu"
fi
echo "[setup] installing this package with its extras (nvflare, monai, data preparation, tests, ...)"
"${pip[@]}" --quiet --no-build-isolation -e ".[test]"
"$venv/bin/python" -m fedsm.recipe --write-job jobs/fedsm_prostate >/dev/null
"$venv/bin/python" -m result_stat.fedavg_job jobs/fedavg_prostate >/dev/null
"$venv/bin/python" - <<'PY'
import torch, nvflare, monai
device = "CUDA " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
print(f"[setup] ready: torch {torch.__version__} ({device}), nvflare {nvflare.__version__}, monai {monai.__version__}")
PY
