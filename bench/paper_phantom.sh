#!/usr/bin/env bash
# The `paper`-difficulty phantom (or DIFFICULTY's) at demo scale, end to end: the image-level model (the paper's:
# each film scored, the patient's mean) and, on the same shards, the fusion model; both evaluated against the
# phantom's ceiling, then compared on the same test patients. BENCHMARKS.md, "The phantom at paper difficulty"
# and "Fusion against the image-level model", record what it printed.
#
#   bench/paper_phantom.sh OUT [PATIENTS] [PREVALENCE] [MODELS]
#   bench/paper_phantom.sh /tmp/pp 2000 paper image             # issue 14: the paper's prevalence, image model
#   bench/paper_phantom.sh /tmp/pf 1500 balanced "image fusion"  # issue 16: both models, a test set with power
#   bench/paper_phantom.sh /tmp/pf 1500 balanced "image fusion_head"  # fusion on the image run's frozen films
#   TRAIN_CONFIG="--config paper --set train.epochs=8" bench/paper_phantom.sh /data/pf 1500 balanced \
#       "image fusion_head"                                      # on a GPU: EfficientNet-B5 at 456 px
#   DIFFICULTY=instability bench/paper_phantom.sh /tmp/pi 1000 balanced "image fusion"   # the fusion benchmark
#
# The models are the demo's unless TRAIN_CONFIG says otherwise: the `tiny` config at 160 px, 4 folds x 4 epochs,
# one cosine cycle (t_0 = 4). Fusion adds attention pooling over a study's films (64-wide tokens), 30% view
# dropout, and 4 studies a batch (about the 16 films of the image model's batch of 16 images); fusion_head trains
# only those fusion layers, on the frozen folds of the image run (run image first), 8 studies a batch. Each fusion
# model is compared with the image model on the same test patients.
set -euo pipefail
OUT=${1:?usage: bench/paper_phantom.sh OUT [PATIENTS] [PREVALENCE] [MODELS]}
PATIENTS=${2:-2000}
PREVALENCE=${3:-paper}
MODELS=${4:-image fusion}
HERE=$(cd "$(dirname "$0")/.." && pwd)
read -ra COMMON <<< "${TRAIN_CONFIG:---config tiny --set data.image_size=160 --set optim.t_0=4}"
FUSION="--set model.fusion=attention --set model.fusion_dim=64 --set data.view_dropout=0.3"
declare -A EXTRA=([image]="" [fusion]="$FUSION --set data.batch_size=4"
                  [fusion_head]="$FUSION --set data.batch_size=8 --set model.fusion_init=$OUT/runs/image
                                 --set model.fusion_train=head")

if [ ! -f "$OUT/phantom/manifest.parquet" ]; then
    hnp phantom --out "$OUT/phantom" --patients "$PATIENTS" --difficulty "${DIFFICULTY:-paper}" \
        --prevalence "$PREVALENCE" --test-fraction 0.4 --workers 2
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
for model in $MODELS; do
    if [[ $model == fusion* && " $MODELS " == *" image "* ]]; then
        hnp compare "$OUT/reports/image" "$OUT/reports/$model" --out "$OUT/compare/$model"
    fi
done
