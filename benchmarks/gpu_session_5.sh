#!/bin/bash
# One call of a lent GPU (about 8.5 minutes of command time; session 7, 2026-11-26):
#   OUT=/tmp/gpu_out bash benchmarks/gpu_session_5.sh
# 1. pytest -m gpu (incl. the check that bf16 decoding builds no cuDNN attention plans);
# 2. stamp bench in bf16 on CUDA: the mask pass in both forms (one masked forward, two unmasked
#    forwards) against the no-cache and autoregressive passes, and the request part;
# 3. the vision tower alone, packed vs image-by-image attention, at the stage-7 image sizes;
# 4. a 30-step probe of configs/tiny-synth-stage7-gpu.yaml (real data workers) to measure samples/s,
#    then the stage-7 run for the steps that fit the time left before END_S, exported in bf16 to
#    $OUT/model.tar.part-* (cat them | tar x: the device tool returns files of at most 16 MiB) with its metrics.csv. MODEL (default: the bundled directory) is the starting point;
#    the run of 2026-11-26 started from the then-bundled stage 6.
# Each part has its own time limit; a failure does not stop the next part. DEV=cpu WORKERS=0 END_S=...
# runs the same script on a CPU (a dry run of the plumbing).
set -u
END_S=${END_S:-500}
PY=${PY:-python3}
DEV=${DEV:-cuda}
WORKERS=${WORKERS:-13}
source "$(dirname "$0")/gpu_preamble.sh"
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
exec > >(tee $OUT/log.txt) 2>&1
date; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null; nproc
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
CFG=configs/tiny-synth-stage7-gpu.yaml
MODEL=${MODEL:-src/stamp/assets/tiny-synth}
if [ "$DEV" = cuda ]; then
  echo "== pytest -m gpu ($(left) s left)"
  timeout 80 $PY -m pytest -m gpu -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tail -4
fi
echo "== bench: mask pass bf16 (both forms), request ($(left) s left)"
timeout ${BENCH_S:-130} $PY -m stamp.cli bench --device $DEV --dtypes bf16 --n ${BENCH_N:-64,256,1024,4096} --ar-repeats 1 \
  --ar-budget 8 --requests 3 --json $OUT/bench_$DEV.json --markdown 2>&1 | grep -v "Loading weights"
echo "== vision tower alone, packed vs per image, 256-448 px ($(left) s left)"
timeout 35 $PY benchmarks/bench_vision_attention.py --images ${VIS_IMAGES:-64} --size 256,448 --device $DEV --bf16 --repeats 5 \
  2>&1 | grep -v "Loading weights"
echo "== training probe: 30 steps ($(left) s left)"
rm -rf runs/probe7
T_PROBE=$(date +%s)
timeout 90 $PY -m stamp.cli train $CFG model.path=$MODEL data.num_workers=$WORKERS run.out_dir=runs/probe7 run.steps=30 ${EXTRA:-} \
  --no-progress 2>&1 | tail -3
PROBE_S=$(( $(date +%s) - T_PROBE ))
SPS=$(awk -F, '$3=="samples_per_s"{v=$4} END{print v}' runs/probe7/metrics.csv 2>/dev/null); SPS=${SPS:-0}
WAIT=$(awk -F, '$3=="data_wait_frac"{v=$4} END{print v}' runs/probe7/metrics.csv 2>/dev/null)
BATCH=$(grep -o "batch_size: [0-9]*" $CFG | awk '{print $2}'); BATCH=${EXTRA_BATCH:-$BATCH}
TRAIN_S=$(( $(left) - 25 ))
# the probe's start-up (model load, workers) costs about as much again; 0.92 leaves room for checkpoints
STEPS=$($PY -c "print(max(0, int(($TRAIN_S - $PROBE_S * 0.6) * $SPS / $BATCH * 0.92 / 25) * 25))")
echo "probe: $SPS samples/s (data wait $WAIT) in a ${PROBE_S}-s run; training: $STEPS steps, at most $TRAIN_S s"
if [ "$STEPS" -ge 50 ]; then
  timeout $((TRAIN_S + 10)) $PY -m stamp.cli train $CFG model.path=$MODEL data.num_workers=$WORKERS run.steps=$STEPS \
    run.max_minutes=$($PY -c "print(($TRAIN_S - 12) / 60)") ${EXTRA:-} --no-progress 2>&1 | grep -v "^step .* loss" | tail -5
  echo "train rc ${PIPESTATUS[0]}"
  OUTDIR=$(grep -o "out_dir: [^ ]*" $CFG | awk '{print $2}')
  CK=$(ls -d $OUTDIR/checkpoints/step_* 2>/dev/null | tail -1); echo "last checkpoint $CK"
  cp $OUTDIR/metrics.csv $OUT/ 2>/dev/null
  [ -n "$CK" ] && $PY -m stamp.models $CK/model --out /tmp/export7/model --force && { tar -C /tmp/export7 -cf - model | split -b 15m - $OUT/model.tar.part-; }
fi
echo "== done ($(( $(date +%s) - T0 )) s)"
