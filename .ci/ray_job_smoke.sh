#!/usr/bin/env bash
# CI step: a real `ray job submit -- python train/run_folds.py` of the tiny config, against a Ray head started
# here on loopback with token auth (Ray 2.60's job server asks for a token; an open job API would let anyone who
# reaches it run code). Phantom radiographs -> shards -> 4 folds x 1 epoch through the Ray job API; then the run
# folder is checked against the run contract. The head is stopped by its PID (not `ray stop`, which would stop
# every Ray on the machine).
#
#   .ci/ray_job_smoke.sh            # uses .venv/bin
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${HNP_VENV:-.venv}/bin"
export PATH="$PWD/$BIN:$PATH"
export RAY_AUTH_MODE=token
work="$(mktemp -d /tmp/hnp-ray-smoke.XXXXXX)"
head_pid=""
cleanup() {
    if [[ -n "$head_pid" ]]; then kill "$head_pid" 2>/dev/null || true; wait "$head_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
gcs_port="$(free_port)"; dashboard_port="$(free_port)"; agent_port="$(free_port)"

echo "== phantom data and shards in $work"
python -m hnp.cli phantom --out "$work/data" --patients 40 --size 256x200 --prevalence balanced >/dev/null
python -m hnp.cli shard --manifest "$work/data/manifest.parquet" --out "$work/shards" --no-progress >/dev/null

echo "== Ray head on 127.0.0.1 (GCS $gcs_port, job API $dashboard_port)"
# --block keeps the head in this process, so killing its PID stops exactly this Ray and nothing else.
ray start --head --block --node-ip-address=127.0.0.1 --port="$gcs_port" --dashboard-host=127.0.0.1 \
    --dashboard-port="$dashboard_port" --dashboard-agent-listen-port="$agent_port" --num-cpus=4 \
    --temp-dir="$work/ray" --disable-usage-stats >"$work/head.log" 2>&1 &
head_pid=$!
address="http://127.0.0.1:$dashboard_port"
for _ in $(seq 120); do
    if ray job list --address "$address" >/dev/null 2>&1; then break; fi
    if ! kill -0 "$head_pid" 2>/dev/null; then cat "$work/head.log"; echo "Ray head exited" >&2; exit 1; fi
    sleep 1
done

echo "== ray job submit"
ray job submit --address "$address" --working-dir . -- python train/run_folds.py --config tiny \
    --shards "$work/shards" --out "$work/run" --set train.epochs=1 --set data.image_size=64 \
    --set 'wandb.mode="off"'

echo "== run contract"
python - "$work/run" <<'PY'
import sys
from pathlib import Path

run = Path(sys.argv[1])
missing = [str(run / name) for name in ["config.yaml"] + [f"fold{k}/{f}" for k in range(4)
           for f in ("best.pt", "history.csv", "val_predictions.parquet")] if not (run / name).is_file()]
if missing:
    sys.exit(f"missing after the Ray job: {', '.join(missing)}")
print(f"ok: {run} holds config.yaml and four complete fold folders")
PY
