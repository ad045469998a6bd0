#!/bin/bash
# One GPU call (prepared in session 8, 2026-11-26; never run: benchmarks/gpu_session_8.sh ran its two arms and a third):
#   OUT=/tmp/gpu_out bash benchmarks/gpu_session_7.sh
# The bundled stage 11 trained twice side by side on the one GPU, with the auxiliary shape loss
# (configs/tiny-synth-stage13-shape-gpu.yaml) and without (configs/tiny-synth-stage13-control-gpu.yaml),
# each for STEPS steps or TRAIN_MIN minutes, then both probed with experiments/probe_objects.py on the GPU.
# Exports both last checkpoints in bf16 to $OUT/{shape,control}.tar.part-* (cat | tar x), with their
# metrics and probes; at most 8 files come back from the device tool, so the small files go in one tar.
# DEV=cpu WORKERS=0 STEPS=2 TRAIN_MIN=1 PROBE_SCENES=10 EXTRA="optim.batch_size=2" NO_WHEELS=1 is a dry run on a CPU.
set -u
END_S=${END_S:-560}
PY=${PY:-python3}
STEPS=${STEPS:-1400}
TRAIN_MIN=${TRAIN_MIN:-6.0}
WORKERS=${WORKERS:-6}
PROBE_SCENES=${PROBE_SCENES:-400}
source "$(dirname "$0")/gpu_preamble.sh"
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
mkdir -p /tmp/small
exec > >(tee /tmp/small/log.txt) 2>&1
date; nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null
rm -rf runs/tiny-synth-stage13-shape-gpu runs/tiny-synth-stage13-control-gpu
PIDS=""
for v in shape control; do
  timeout $(( $(left) - 90 )) $PY -m stamp.cli train configs/tiny-synth-stage13-$v-gpu.yaml data.num_workers=$WORKERS \
    run.steps=$STEPS run.max_minutes=$TRAIN_MIN ${EXTRA:-} --no-progress > /tmp/small/train_$v.log 2>&1 &
  PIDS="$PIDS $!"
done
wait $PIDS; echo "both done ($(left) s left)"
for v in shape control; do
  d=runs/tiny-synth-stage13-$v-gpu
  awk -F, '$3=="samples_per_s"{n++; s+=$4} END{if(n) print FILENAME, "mean samples/s", s/n, "over", n, "windows"}' $d/metrics.csv
  grep -hE "reached|rror" /tmp/small/train_$v.log | tail -2
  ck=$(ls -d $d/checkpoints/step_* 2>/dev/null | tail -1); echo "$v: last checkpoint $ck"
  cp $d/metrics.csv /tmp/small/${v}_metrics.csv 2>/dev/null
  [ -n "$ck" ] && $PY -m stamp.models $ck/model --out /tmp/export_$v/model --force 2>&1 | grep wrote \
    && { tar -C /tmp/export_$v -cf - model | split -b 15m - $OUT/$v.tar.part-; }
  [ -n "$ck" ] && timeout 90 $PY experiments/probe_objects.py --model $ck/model --scenes $PROBE_SCENES --threads 8 \
    --out /tmp/small/probe_$v.json > /dev/null 2>&1; echo "probe $v rc $? ($(left) s left)"
done
echo "== done ($(left) s left)"
tar -C /tmp/small -czf $OUT/small.tgz .
