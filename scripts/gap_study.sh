#!/usr/bin/env bash
# Run by: users. User commands live in scripts/, maintainer tools in tools/.
# The generalization-gap study in one command: FedSM next to local, FedAvg and centralized training
# on the same data, models, preprocessing and budget (rounds x local epochs), plus a held-out unseen
# site, then the comparison report (tables, CSV, plots).
#
#   bash scripts/gap_study.sh          # CPU preset: synthetic data, 50 rounds, 96x96, light selector (~50 min on 2 cores: three FedSM runs of ~11 min each, FedAvg, centralized and local ~5 min each)
#   bash scripts/gap_study.sh gpu      # full preset: 100 rounds, 256x256, VGG11 selector (one GPU)
#   bash scripts/gap_study.sh cpu-faithful   # the paper's 100 rounds with its VGG11 selector at 64x64, the light
#                                            # selector's FedSM run beside it (~80 min a seed on 2 cores)
#   bash scripts/gap_study.sh --seeds 3 [cpu|gpu]   # every method with train.seed 0, 1, 2 (3x the time; GAP_VARIANTS= GAP_QUANTIZE= leaves the extra FedSM runs out: ~27 min a seed)
#
# Steps: synthetic 3-site data with the unseen site UNSEEN; FedSM in the NVFlare simulator (the job's
# selector_training, client_adam_on_server: the published client_adam math, only the wire format
# differs), and once more per variant in GAP_VARIANTS (default server_adam; "server_adam client_adam"
# adds the paper's wire format) and per GAP_QUANTIZE type; the FedAvg job (jobs/fedavg_prostate) with
# the FedSM job's config_train.json; centralized and local-only training (result_stat.baselines);
# result_stat.gap_report, whose extra row "routed by validation" uses a site's personalized model
# only where validation trusts it.
# With --seeds N every method runs N times with train.seed 0..N-1 (initialization and data order; the
# data split stays): seed 0 in $GAP_STUDY_DIR as with one seed, seed s in $GAP_STUDY_DIR/seed_s.
#
# Environment:
#   GAP_STUDY_DIR  output folder (default /tmp/nvflare/gap_study); the report lands in $GAP_STUDY_DIR/report
#   GAP_DATA       data folder with dataset_2D/ and datalist_2D/; if it holds no datalist_2D, synthetic data
#                  are generated there (default $GAP_STUDY_DIR/data). Point it at the prepared real data
#                  (python -m data_preparation.prepare ...) to run the study on them.
#   GAP_ROUNDS     number of rounds (default: 50 cpu, 100 gpu)
#   GAP_VARIANTS   extra FedSM runs by selector_training, space separated (default "server_adam"; "" for none)
#   GAP_QUANTIZE   extra FedSM runs with NVFlare's ModelQuantizer/ModelDequantizer both ways, by quantization
#                  type (default: "float16" cpu, "blockwise8" gpu, which NVFlare 2.9 runs on CUDA only; "" for none)
#   GAP_SELECTORS  extra FedSM runs by selector architecture, space separated (default "light" cpu-faithful, else "")
#   GAP_BASELINES  the methods run beside FedSM, of "fedavg centralized local" (default all three; "" for none,
#                  e.g. GAP_VARIANTS= GAP_BASELINES= --seeds 2: FedSM against its float16 transport only)
#   GAP_CASES      synthetic cases per site (default: 8 cpu, 16 gpu)
#   GAP_SEEDS      number of seeds (default 1; --seeds N overrides)
#   GAP_ROUTE_MARGIN  validation Dice margin of the "routed by validation" row (default 0)
set -euo pipefail
cd "$(dirname "$0")/.."
seeds="${GAP_SEEDS:-1}"
preset=cpu
while [ $# -gt 0 ]; do
  case "$1" in
    --seeds) seeds="${2:?--seeds takes a number}"; shift 2 ;;
    --seeds=*) seeds="${1#--seeds=}"; shift ;;
    *) preset="$1"; shift ;;
  esac
done
case "$seeds" in ''|*[!0-9]*|0) echo "--seeds must be a positive integer, got '$seeds'" >&2; exit 2 ;; esac
margin="${GAP_ROUTE_MARGIN:-0}"
python="${FEDSM_VENV:-.venv}/bin/python"
nvflare="${FEDSM_VENV:-.venv}/bin/nvflare"
out="${GAP_STUDY_DIR:-/tmp/nvflare/gap_study}"
data="${GAP_DATA:-$out/data}"
variants_default=server_adam; quantize_default=float16; selectors_default=""
case "$preset" in
  gpu) quantize_default=blockwise8 ;;
  cpu-faithful) variants_default=""; quantize_default=""; selectors_default=light ;;
esac
variants="${GAP_VARIANTS-$variants_default}"
quantize="${GAP_QUANTIZE-$quantize_default}"
selectors="${GAP_SELECTORS-$selectors_default}"
baselines="${GAP_BASELINES-fedavg centralized local}"
read -ra baseline_runs <<< "$baselines"
for baseline in "${baseline_runs[@]}"; do
  case "$baseline" in fedavg|centralized|local) ;; *) echo "GAP_BASELINES: unknown method '$baseline'" >&2; exit 2 ;; esac
done
clients=client_I2CVB,client_MSD,client_NCI_ISBI_3T
case "$preset" in
  cpu) rounds="${GAP_ROUNDS:-50}"; cases="${GAP_CASES:-8}"
       train=(--set train.image_size=96 --set train.selector=light --set train.cache_dataset=1.0) ;;
  gpu) rounds="${GAP_ROUNDS:-100}"; cases="${GAP_CASES:-16}"
       train=(--set train.image_size=256 --set train.selector=vgg11 --set train.cache_dataset=1.0) ;;
  cpu-faithful) rounds="${GAP_ROUNDS:-100}"; cases="${GAP_CASES:-8}"
       train=(--set train.image_size=64 --set train.selector=vgg11 --set train.cache_dataset=1.0) ;;
  *) echo "usage: $0 [--seeds N] [cpu|gpu|cpu-faithful]" >&2; exit 2 ;;
esac
[ -x "$python" ] || bash scripts/setup.sh
mkdir -p "$out"
start=$SECONDS
duration() {  # seconds as 12m05s, or 1h05m from an hour on
  if [ "$1" -ge 3600 ]; then printf '%dh%02dm' $(($1 / 3600)) $(($1 % 3600 / 60)); else printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); fi
}
step() { echo "[gap_study $(duration $((SECONDS - start)))] $*"; }

# Progress: which run of how many, and the time left. A FedSM run weighs 2 and a FedAvg, centralized
# or local run 1, the ratio of their times on the CPU preset (about 11 and 5 minutes on 2 cores);
# the time left is the time per weight so far times the weight still to run.
read -ra extra_fedsm <<< "$variants $quantize $selectors"
fedsm_runs=$((1 + ${#extra_fedsm[@]}))
total_runs=$((seeds * (fedsm_runs + ${#baseline_runs[@]})))
total_weight=$((seeds * (2 * fedsm_runs + ${#baseline_runs[@]})))
run=0; weight_done=0; weight_now=0; runs_started=0
begin_run() {  # begin_run WEIGHT TEXT
  local left=""
  [ "$run" -gt 0 ] || runs_started=$SECONDS
  weight_done=$((weight_done + weight_now)); weight_now=$1; run=$((run + 1))
  if [ "$weight_done" -gt 0 ]; then
    left=", about $(duration $(( (SECONDS - runs_started) * (total_weight - weight_done) / weight_done ))) left"
  fi
  step "run $run/$total_runs$left: $2"
}

if [ ! -d "$data/datalist_2D" ]; then
  step "synthetic data: I2CVB, MSD, NCI_ISBI_3T + unseen site UNSEEN, $cases cases per site -> $data"
  "$python" -m data_preparation.synthetic --output "$data" --cases-per-site "$cases" --seed 0 --with-unseen \
    > "$out/data.log" 2>&1
else
  step "using the data in $data"
fi
common=(--set "train.dataset_base_dir=$data/dataset_2D" --set "train.datalist_json_path=$data/datalist_2D"
        --set "server.num_rounds=$rounds" "${train[@]}")

glibc_tunables=$("$python" -m fedsm.ops.heap)  # the huge-page heap for every simulator run
simulate() {  # simulate JOB WORKSPACE LOG
  rm -rf "$2"
  GLIBC_TUNABLES="$glibc_tunables" "$nvflare" simulator "$1" -w "$2" -c "$clients" -t 3 > "$3" 2>&1 \
    || { echo "[gap_study] $(basename "$3" .log) failed; see $3" >&2; exit 1; }
}

fedsm_run() {  # fedsm_run SEED FOLDER NAME TITLE [job_config options]: one FedSM run, as $FOLDER/ws/NAME
  local seed=$1 dir=$2 name=$3 title=$4
  shift 4
  begin_run 2 "seed $seed: FedSM ($title)"
  "$python" -m fedsm.job_config jobs/fedsm_prostate "$dir/jobs/$name" "${common[@]}" --set "train.seed=$seed" "$@" \
    >/dev/null
  simulate "$dir/jobs/$name" "$dir/ws/$name" "$dir/$name.log"
}

run_seed() {  # run_seed SEED FOLDER: every method with train.seed SEED, into FOLDER
  local seed=$1 dir=$2 variant kind
  mkdir -p "$dir"
  fedsm_run "$seed" "$dir" fedsm "the job's selector_training, $rounds rounds, preset $preset"
  for variant in $variants; do
    fedsm_run "$seed" "$dir" "fedsm_$variant" "selector_training $variant" --set "train.selector_training=$variant"
  done
  for kind in $quantize; do
    fedsm_run "$seed" "$dir" "fedsm_$kind" "$kind quantization both ways" --quantize "$kind"
  done
  for selector in $selectors; do
    fedsm_run "$seed" "$dir" "fedsm_$selector" "$selector selector" --set "train.selector=$selector"
  done
  if has_baseline fedavg; then
    begin_run 1 "seed $seed: FedAvg (jobs/fedavg_prostate, the FedSM job's config_train.json)"
    "$python" -m result_stat.fedavg_job jobs/fedavg_prostate "$dir/jobs/fedavg" \
      --train-config-from "$dir/jobs/fedsm/app/config/config_train.json" --set "server.num_rounds=$rounds" >/dev/null
    simulate "$dir/jobs/fedavg" "$dir/ws/fedavg" "$dir/fedavg.log"
  fi
  if has_baseline centralized; then
    begin_run 1 "seed $seed: centralized (pooled data of all sites)"
    "$python" -m result_stat.baselines centralized --job "$dir/jobs/fedsm" --output "$dir/centralized" \
      > "$dir/centralized.log" 2>&1
  fi
  if has_baseline local; then
    begin_run 1 "seed $seed: local only (one model per site)"
    "$python" -m result_stat.baselines local --job "$dir/jobs/fedsm" --output "$dir/local" > "$dir/local.log" 2>&1
  fi
}
has_baseline() { [[ " $baselines " == *" $1 "* ]]; }

fedsm=(); fedavg=(); centralized=(); local_runs=(); variant_args=()
for seed in $(seq 0 $((seeds - 1))); do
  dir="$out"; [ "$seed" -eq 0 ] || dir="$out/seed_$seed"
  run_seed "$seed" "$dir"
  fedsm+=("$dir/ws/fedsm")
  has_baseline fedavg && fedavg+=("$dir/ws/fedavg")
  has_baseline centralized && centralized+=("$dir/centralized")
  has_baseline local && local_runs+=("$dir/local")
  for variant in $variants $quantize $selectors; do variant_args+=(--fedsm-variant "$variant=$dir/ws/fedsm_$variant"); done
done

step "all $total_runs runs done; report ($seeds seed(s))"
baseline_args=()
[ ${#fedavg[@]} -eq 0 ] || baseline_args+=(--fedavg "${fedavg[@]}")
[ ${#centralized[@]} -eq 0 ] || baseline_args+=(--centralized "${centralized[@]}")
[ ${#local_runs[@]} -eq 0 ] || baseline_args+=(--local "${local_runs[@]}")
"$python" -m result_stat.gap_report --fedsm "${fedsm[@]}" "${variant_args[@]}" "${baseline_args[@]}" \
  --route_by_validation "$margin" --output "$out/report" 2> "$out/report.log"
step "done: $out/report/report.md"
