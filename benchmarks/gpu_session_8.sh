#!/bin/bash
# One GPU call (session 10, 2026-11-26; 556 s of command time; ran once on an H200: all three arms stopped
# at the time limit, steps 987 / 938 / 946 at ~165 samples/s each, and the calibrations did not finish in
# the 173 s left, so they were run on the CPU; docs/results/tiny-synth/gpu-session-8-h200.log):
#   OUT=/tmp/gpu_out bash benchmarks/gpu_session_8.sh      # device tool: carry .whl and runs/anchor2-bf16
# Stage 13's three arms trained side by side on the one GPU from the same data stream (data.seed 13):
#   control  configs/tiny-synth-stage13-control-gpu.yaml  stage 11, STAMP losses only
#   shape    configs/tiny-synth-stage13-shape-gpu.yaml    stage 11, plus the auxiliary shape loss
#   anchor   configs/tiny-synth-stage13-anchor-gpu.yaml   as shape, from stage 11 with the anchored
#            shape-trained tower (make runs/anchor2-bf16/model first: see that config's header)
# each for STEPS steps (its cosine schedule's length) or TRAIN_MIN minutes. Then each last checkpoint is
# exported in bf16 to $OUT/<arm>.tgz.part-* (cat | tar xz) and, while time lasts, calibrated on the
# selection set (SynthRef val --seed 1, 600 samples, fp32, guided) on the GPU, three at once; the metrics,
# logs and calibrations come back in $OUT/small.tgz (the device tool returns at most 8 files).
# DEV=cpu WORKERS=0 STEPS=2 TRAIN_MIN=1 CAL_LIMIT=4 EXTRA="optim.batch_size=2" NO_WHEELS=1 is a CPU dry run.
# STAGE=14 ARMS="continue vqa" trains configs/tiny-synth-stage14-{continue,vqa}-gpu.yaml instead (CAL_LIMIT=0:
# no calibration on the GPU; it takes ~5 minutes per model on the 2-core CPU).
set -u
END_S=${END_S:-570}
PY=${PY:-python3}
STEPS=${STEPS:-1000}
TRAIN_MIN=${TRAIN_MIN:-6.3}
WORKERS=${WORKERS:-5}
DEV=${DEV:-cuda}
CAL_LIMIT=${CAL_LIMIT:-600}
STAGE=${STAGE:-13}
ARMS=${ARMS:-control shape anchor}
source "$(dirname "$0")/gpu_preamble.sh"
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
mkdir -p /tmp/small
exec > >(tee /tmp/small/log.txt) 2>&1
date; nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null
case " $ARMS " in *" anchor "*) [ -f runs/anchor2-bf16/model/config.json ] || { echo "runs/anchor2-bf16/model is missing"; exit 4; };; esac
PIDS=""
for v in $ARMS; do
  rm -rf runs/tiny-synth-stage$STAGE-$v-gpu
  timeout $(( $(left) - 100 )) $PY -m stamp.cli train configs/tiny-synth-stage$STAGE-$v-gpu.yaml data.num_workers=$WORKERS \
    run.steps=$STEPS run.max_minutes=$TRAIN_MIN ${EXTRA:-} --no-progress > /tmp/small/train_$v.log 2>&1 &
  PIDS="$PIDS $!"
done
wait $PIDS; echo "all trained ($(left) s left)"
PIDS=""
for v in $ARMS; do
  d=runs/tiny-synth-stage$STAGE-$v-gpu
  awk -F, '$3=="samples_per_s"{n++; s+=$4} END{if(n) print FILENAME, "mean samples/s", s/n, "over", n, "windows"}' $d/metrics.csv
  grep -hE "reached|rror" /tmp/small/train_$v.log | tail -2
  ck=$(ls -d $d/checkpoints/step_* 2>/dev/null | tail -1); echo "$v: last checkpoint $ck"
  cp $d/metrics.csv /tmp/small/${v}_metrics.csv 2>/dev/null
  if [ -n "$ck" ] && $PY -m stamp.models $ck/model --out /tmp/export_$v/model --force | grep wrote; then
    tar -C /tmp/export_$v -czf - model | split -b 15m - $OUT/$v.tgz.part-
    [ "$CAL_LIMIT" -gt 0 ] && timeout $(( $(left) - 15 )) $PY -m stamp.cli calibrate --data synthref --model /tmp/export_$v/model \
      --dtype float32 --refine guided --device $DEV --limit $CAL_LIMIT --no-progress \
      --out /tmp/small/calibration_$v.json > /tmp/small/calibrate_$v.log 2>&1 &
    PIDS="$PIDS $!"
  fi
done
wait $PIDS; echo "== done ($(left) s left)"
tar -C /tmp/small -czf $OUT/small.tgz .
