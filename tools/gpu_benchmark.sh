#!/usr/bin/env bash
# Run by: maintainers, to measure the job (docs/performance.md). User commands live in scripts/.
# FedSM on one CUDA machine: the faithful config (256x256, VGG11 selector, the job's defaults), 3
# clients, 3 rounds, once in float32 and once with bfloat16 autocast and channels_last; then each
# run's pooled test Dice and one summary table (s/round, busy, communicate, outside compute, peak GPU
# memory per client). Everything goes under $1 (default $OUT, else /tmp/gpu_bench).
#
#   bash tools/gpu_benchmark.sh /tmp/gpu_bench
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-${OUT:-/tmp/gpu_bench}}")
python="${FEDSM_VENV:-.venv}/bin/python"
[ -x "$python" ] || bash scripts/setup.sh
mkdir -p "$out"
"$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "no CUDA device; this script measures the GPU path")'

data="$out/data"
echo "[gpu] synthetic data, 12 cases per site -> $data"
"$python" -m data_preparation.synthetic --output "$data" --cases-per-site 12 --seed 0 > "$out/data.log"

runs=(fp32 bf16_channels_last)
declare -A options=([fp32]="" [bf16_channels_last]="--set train.amp=true --set train.channels_last=true")
for run in "${runs[@]}"; do
  echo "[gpu] $run: 3 rounds, 3 clients -> $out/$run"
  # shellcheck disable=SC2086  # the run's options are separate words
  if "$python" tools/benchmark.py --rounds 3 --clients client_I2CVB,client_MSD,client_NCI_ISBI_3T \
      --workdir "$out/$run" --set "train.dataset_base_dir=$data/dataset_2D" \
      --set "train.datalist_json_path=$data/datalist_2D" ${options[$run]} > "$out/$run.benchmark.txt" 2>&1; then
    "$python" -m result_stat.prostate_2d_test_only --workspace "$out/$run/workspace" \
      --output_json "$out/$run/test_results.json" > "$out/$run.test_only.txt" 2>&1 \
      || echo "[gpu] $run: test-only evaluation failed, see $out/$run.test_only.txt" >&2
  else
    echo "[gpu] $run: benchmark failed, see $out/$run.benchmark.txt" >&2
  fi
  cat "$out/$run.benchmark.txt"
done

"$python" - "$out" "${runs[@]}" <<'PY' | tee "$out/summary.txt"
"""One row per run: rounds after the first (start-up) averaged, GPU peaks the largest of any round."""
import json
import sys
from pathlib import Path

sys.path.insert(0, "tools")
from benchmark import records_file, round_costs  # noqa: E402

out = Path(sys.argv[1])
print(f"{'run':<20} {'s/round':>8} {'round 0':>8} {'busy s':>7} {'comm. s':>7} {'outside':>8} {'test Dice':>9}  "
      "peak GPU GiB per client")
for run in sys.argv[2:]:
    results = out / run / "test_results.json"
    costs = round_costs(records_file(out / run / "workspace"))
    later = costs[1:] or costs
    if not later:
        print(f"{run:<20} no rounds reported")
        continue
    mean = {key: sum(c[key] for c in later) / len(later) for key in ("wall", "busy", "communicate", "aggregate")}
    outside = (mean["communicate"] + mean["aggregate"]) / mean["wall"] if mean["wall"] else 0.0
    clients = dict.fromkeys(name for cost in costs for name in cost["gpu"])
    gpu = {name: max(cost["gpu"].get(name, 0.0) for cost in costs) for name in clients}
    dice = f"{json.loads(results.read_text())['test_dice']:.4f}" if results.is_file() else "-"
    print(f"{run:<20} {mean['wall']:>8.2f} {costs[0]['wall']:>8.2f} {mean['busy']:>7.2f} {mean['communicate']:>7.2f} "
          f"{outside:>8.1%} {dice:>9}  " + (", ".join(f"{n} {p:.2f}" for n, p in gpu.items()) or "-"))
PY
echo "[gpu] done; everything is in $out"
