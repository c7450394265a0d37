#!/usr/bin/env bash
# Run by: users. User commands live in scripts/, maintainer tools in tools/.
# The demo, end to end on a fresh machine with no download (about 10-15 minutes on 2 CPU cores):
# set-up, synthetic 3-site data, the FedSM job in the NVFlare simulator at a CPU-sized config,
# test-only evaluation of the super model and of the global model alone, validation curves.
# FEDSM_DEMO_DIR (default /tmp/nvflare/fedsm_demo) holds the job, the workspace and the results;
# the data go to /tmp/nvflare/fedsm_data, where jobs/fedsm_prostate looks for them by default.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python="${FEDSM_VENV:-.venv}/bin/python"
nvflare="${FEDSM_VENV:-.venv}/bin/nvflare"
demo="${FEDSM_DEMO_DIR:-/tmp/nvflare/fedsm_demo}"
data=/tmp/nvflare/fedsm_data
clients=client_I2CVB,client_MSD,client_NCI_ISBI_3T
mkdir -p "$demo"

echo "[demo] 1/4 synthetic data for I2CVB, MSD, NCI_ISBI_3T (+ an unseen site) -> $data"
"$python" -m data_preparation.synthetic --output "$data" --cases-per-site 8 --seed 0 --with-unseen

rounds=40
echo "[demo] 2/4 FedSM in the NVFlare simulator (CPU config: 96x96 images, light selector, $rounds rounds)"
"$python" -m fedsm.job_config jobs/fedsm_prostate "$demo/job" \
  --set server.num_rounds=$rounds --set train.image_size=96 --set train.selector=light \
  --set train.cache_dataset=1.0 >/dev/null
rm -rf "$demo/workspace"
started=$SECONDS
GLIBC_TUNABLES="$("$python" -m fedsm.ops.heap)" "$nvflare" simulator "$demo/job" -w "$demo/workspace" -c "$clients" -t 3 > "$demo/simulator.log" 2>&1 &
sim=$!
trap 'kill $sim 2>/dev/null || true' EXIT
minutes() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }
shown=0
done_rounds=0
show_progress() {  # the server's new validation lines, then "round N/M" once a round more has finished
  local lines finished elapsed
  lines=$(grep -E "validation \(mean over [0-9]+ clients\)" "$demo/simulator.log" | sed 's/^.* - INFO - /[demo]   /' || true)
  if [ -n "$lines" ]; then
    printf '%s\n' "$lines" | tail -n +$((shown + 1))
    shown=$(printf '%s\n' "$lines" | wc -l)
  fi
  finished=$(grep -cE "Round [0-9]+ finished in" "$demo/simulator.log" || true)
  [ "$finished" -gt "$done_rounds" ] || return 0
  done_rounds=$finished
  elapsed=$((SECONDS - started))
  echo "[demo] round $finished/$rounds done, $(minutes $elapsed) elapsed, about" \
    "$(minutes $((elapsed * (rounds - finished) / finished))) left"
}
while kill -0 $sim 2>/dev/null; do
  sleep 5
  show_progress
done
show_progress
wait $sim || { echo "[demo] the simulator failed; see $demo/simulator.log" >&2; exit 1; }
trap - EXIT

echo "[demo] 3/4 test-only evaluation: super model (selector threshold 0.9) next to the global model alone"
"$python" -m result_stat.prostate_2d_test_only --workspace "$demo/workspace" --select_threshold 0.9 \
  --output_json "$demo/test_results.json" 2>"$demo/test_only.log"

echo "[demo] 4/4 validation curves"
"$python" -m result_stat.plot_tensorboard_events --workspace "$demo/workspace" --output "$demo/fedsm_validation_curves.png"
echo "[demo] done. Results in $demo:"
echo "[demo]   test Dice per site (table above): $demo/test_results.json"
echo "[demo]   validation curves: $demo/fedsm_validation_curves.png"
echo "[demo]   every site's curves, recorded by the server: $demo/workspace/server/simulate_job/tb_events"
echo "[demo]   best models and FedSM state: $demo/workspace/server/simulate_job/app_server"
echo "[demo]   simulator log: $demo/simulator.log; TensorBoard: tensorboard --logdir $demo/workspace/server/simulate_job/tb_events"
