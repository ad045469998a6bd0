#!/bin/bash
# One call of a lent GPU (session 8, 2026-11-26; about 9.5 minutes of command time):
#   OUT=/tmp/gpu_out bash benchmarks/gpu_session_6.sh
# Two training runs side by side on the one GPU (each is bound by its own process's kernel launches,
# not by the GPU, so they share it well; 16 CPU cores are split between their data workers):
#   1. configs/experiments/stage9-control-4layer.yaml: stage 9's recipe on the 4-layer stage-7 model,
#      stopped at step 485 like stage 9 (needs runs/tiny-synth-stage7-gpu/model; carry it);
#   2. configs/tiny-synth-stage11-gpu.yaml: the bundled stage 9 trained for TRAIN_MIN minutes or
#      STEPS steps, whichever comes first.
# Both last checkpoints are exported in bf16 to $OUT/{control,stage11}.tar.part-* (cat PARTS | tar x:
# the device tool returns files of at most 16 MiB), with their metrics.csv.
# The run of 2026-11-26 13:22 UTC (H100): control 241 samples/s to step 485, stage 11 252 samples/s to
# step 1,400 (6.4 minutes), side by side.
# DEV=cpu WORKERS_A=0 WORKERS_B=0 STEPS=3 STOP=2 TRAIN_MIN=1 EXTRA="optim.batch_size=2" NO_WHEELS=1 is a
# dry run of the plumbing on a CPU.
set -u
END_S=${END_S:-560}
PY=${PY:-python3}
STEPS=${STEPS:-1400}
STOP=${STOP:-485}
TRAIN_MIN=${TRAIN_MIN:-7.6}
WORKERS_A=${WORKERS_A:-6}
WORKERS_B=${WORKERS_B:-7}
source "$(dirname "$0")/gpu_preamble.sh"
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
exec > >(tee $OUT/log.txt) 2>&1
date; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null; nproc
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
CTRL_DIR=runs/stage9-control-4layer
MAIN_DIR=runs/tiny-synth-stage11-gpu
rm -rf $CTRL_DIR $MAIN_DIR
echo "== control (4 layers, to step $STOP) and stage 11 (8 layers), side by side ($(left) s left)"
timeout $(( $(left) - 60 )) $PY -m stamp.cli train configs/experiments/stage9-control-4layer.yaml \
  data.num_workers=$WORKERS_A run.stop_at_step=$STOP ${EXTRA:-} --no-progress > $OUT/control_train.log 2>&1 &
PID_A=$!
timeout $(( $(left) - 40 )) $PY -m stamp.cli train configs/tiny-synth-stage11-gpu.yaml \
  data.num_workers=$WORKERS_B run.steps=$STEPS run.max_minutes=$TRAIN_MIN ${EXTRA:-} --no-progress > $OUT/stage11_train.log 2>&1 &
PID_B=$!
wait $PID_A; echo "control rc $? ($(left) s left)"
wait $PID_B; echo "stage 11 rc $? ($(left) s left)"
for d in $CTRL_DIR $MAIN_DIR; do
  awk -F, '$3=="samples_per_s"{n++; s+=$4} END{if(n) print FILENAME, "mean samples/s", s/n, "over", n, "windows"}' $d/metrics.csv
done
grep -hE "reached|rror" $OUT/control_train.log $OUT/stage11_train.log | tail -4
export_run() {  # $1 run dir, $2 name
  local ck; ck=$(ls -d $1/checkpoints/step_* 2>/dev/null | tail -1); echo "$2: last checkpoint $ck"
  cp $1/metrics.csv $OUT/$2_metrics.csv 2>/dev/null
  [ -n "$ck" ] && $PY -m stamp.models $ck/model --out /tmp/export_$2/model --force 2>&1 | grep wrote \
    && { tar -C /tmp/export_$2 -cf - model | split -b 15m - $OUT/$2.tar.part-; }
}
export_run $CTRL_DIR control
export_run $MAIN_DIR stage11
echo "== done ($(left) s left)"
