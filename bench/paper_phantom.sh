#!/usr/bin/env bash
# The `paper`-difficulty phantom at demo scale, end to end: the image-level model (the paper's: each film scored,
# the patient's mean) and, on the same shards, the fusion model; both evaluated against the phantom's ceiling,
# then compared on the same test patients. BENCHMARKS.md, "The phantom at paper difficulty" and "Fusion against
# the image-level model", record what it printed.
#
#   bench/paper_phantom.sh OUT [PATIENTS] [PREVALENCE] [MODELS]
#   bench/paper_phantom.sh /tmp/pp 2000 paper image             # issue 14: the paper's prevalence, image model
#   bench/paper_phantom.sh /tmp/pf 1500 balanced "image fusion"  # issue 16: both models, a test set with power
#
# Both models are the demo's: the `tiny` config at 160 px, 4 folds x 4 epochs, one cosine cycle (t_0 = 4). Fusion
# adds attention pooling over a study's films (64-wide tokens), 30% view dropout, and 4 studies a batch (about the
# 16 films of the image model's batch of 16 images).
set -euo pipefail
OUT=${1:?usage: bench/paper_phantom.sh OUT [PATIENTS] [PREVALENCE] [MODELS]}
PATIENTS=${2:-2000}
PREVALENCE=${3:-paper}
MODELS=${4:-image fusion}
HERE=$(cd "$(dirname "$0")/.." && pwd)
COMMON=(--config tiny --set data.image_size=160 --set optim.t_0=4)
declare -A EXTRA=([image]="" [fusion]="--set model.fusion=attention --set model.fusion_dim=64 --set data.view_dropout=0.3 --set data.batch_size=4")

if [ ! -f "$OUT/phantom/manifest.parquet" ]; then
    hnp phantom --out "$OUT/phantom" --patients "$PATIENTS" --difficulty paper --prevalence "$PREVALENCE" \
        --test-fraction 0.4 --workers 2
fi
hnp shard --manifest "$OUT/phantom/manifest.parquet" --out "$OUT/shards" --workers 2 > "$OUT/shard.log"
for model in $MODELS; do
    # shellcheck disable=SC2086 # EXTRA holds several words on purpose
    /usr/bin/time -f "$model: train %e s wall" hnp train "${COMMON[@]}" ${EXTRA[$model]} --shards "$OUT/shards" \
        --out "$OUT/runs/$model"
    /usr/bin/time -f "$model: eval %e s wall" hnp eval --run "$OUT/runs/$model" --shards "$OUT/shards" \
        --out "$OUT/reports/$model" --truth "$OUT/phantom/truth.parquet" --gradcam-top 20 \
        --gradcam-method hirescam --explain-checks 0 --no-wandb
done
python "$HERE/bench/phantom_benchmark.py" --phantom "$OUT/phantom" --report "$OUT/reports/image"
if [[ " $MODELS " == *" fusion "* && " $MODELS " == *" image "* ]]; then
    hnp compare "$OUT/reports/image" "$OUT/reports/fusion" --out "$OUT/compare"
fi
