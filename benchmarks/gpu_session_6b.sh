#!/bin/bash
# The second GPU call of session 8 (2026-11-26; about 5 minutes of command time):
#   OUT=/tmp/gpu_out bash benchmarks/gpu_session_6b.sh
# Stage 11 (runs/tiny-synth-stage11-gpu/model, from benchmarks/gpu_session_6.sh; carry it) trained
# further twice, side by side on the one GPU: as it is (8 layers, configs/tiny-synth-stage12-gpu.yaml)
# and grown to 12 layers (configs/tiny-synth-stage12-deep-gpu.yaml), each for STEPS steps or TRAIN_MIN
# minutes. Both last checkpoints are exported in bf16 to $OUT/{s12,s12deep}.tar.part-* (cat | tar x).
# The run of 2026-11-26 13:41 UTC (H100): 215 and 207 samples/s, both to step 520; the 12-layer run's
# metrics.csv did not come back (the device tool returned 8 of the 9 files under $OUT).
# DEV=cpu WORKERS=0 STEPS=3 TRAIN_MIN=1 EXTRA="optim.batch_size=2" NO_WHEELS=1 is a dry run on a CPU.
set -u
END_S=${END_S:-320}
PY=${PY:-python3}
STEPS=${STEPS:-520}
TRAIN_MIN=${TRAIN_MIN:-3.5}
WORKERS=${WORKERS:-6}
source "$(dirname "$0")/gpu_preamble.sh"
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
exec > >(tee $OUT/log.txt) 2>&1
date; nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null
rm -rf runs/grown12 runs/tiny-synth-stage12-gpu runs/tiny-synth-stage12-deep-gpu
$PY -m stamp.model.grow runs/tiny-synth-stage11-gpu/model --layers 12 --out runs/grown12 2>&1 | grep grew
PIDS=""
for v in "" -deep; do
  timeout $(( $(left) - 45 )) $PY -m stamp.cli train configs/tiny-synth-stage12$v-gpu.yaml data.num_workers=$WORKERS \
    run.steps=$STEPS run.max_minutes=$TRAIN_MIN ${EXTRA:-} --no-progress > $OUT/s12$v.log 2>&1 &
  PIDS="$PIDS $!"
done
wait $PIDS; echo "both done ($(left) s left)"
for v in "" -deep; do
  d=runs/tiny-synth-stage12$v-gpu; n=s12${v#-}
  awk -F, '$3=="samples_per_s"{n++; s+=$4} END{if(n) print FILENAME, "mean samples/s", s/n, "over", n, "windows"}' $d/metrics.csv
  grep -hE "reached|rror" $OUT/s12$v.log | tail -2
  ck=$(ls -d $d/checkpoints/step_* 2>/dev/null | tail -1); echo "$n: last checkpoint $ck"
  cp $d/metrics.csv $OUT/${n}_metrics.csv 2>/dev/null
  [ -n "$ck" ] && $PY -m stamp.models $ck/model --out /tmp/export_$n/model --force 2>&1 | grep wrote \
    && { tar -C /tmp/export_$n -cf - model | split -b 15m - $OUT/$n.tar.part-; }
done
echo "== done ($(left) s left)"
