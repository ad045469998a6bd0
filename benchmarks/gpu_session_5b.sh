#!/bin/bash
# The second, short GPU call of session 7 (2026-11-26; about 3 minutes of command time):
#   OUT=/tmp/gpu_out bash benchmarks/gpu_session_5b.sh
# Grows MODEL (default the bundled directory, which held stage 7 when this ran) to 8 decoder layers (stamp.model.grow) and trains it with
# configs/tiny-synth-stage9-deep-gpu.yaml for STEPS steps or TRAIN_MIN minutes, whichever comes first;
# exports the last checkpoint in bf16 to $OUT/model.tar.part-* (cat them | tar x: the device tool returns files of at most 16 MiB) with its metrics.csv.
# The run of 2026-11-26 11:32 UTC (H100) stopped at its time limit at step 485 of 700 (242 samples/s
# on average, start-up included; the cosine schedule was at about a third of the peak learning rate);
# its single model.tgz (17 MB) exceeded the tool's 16 MiB per file and was fetched in parts by a second
# call, which is why the export is now split.
# DEV=cpu WORKERS=0 STEPS=3 EXTRA="optim.batch_size=2" NO_WHEELS=1 is a dry run of the plumbing on a CPU.
set -u
PY=${PY:-python3}
STEPS=${STEPS:-700}
TRAIN_MIN=${TRAIN_MIN:-2.3}
WORKERS=${WORKERS:-13}
T0=$(date +%s)
if [ -d .whl ] && [ -z "${NO_WHEELS:-}" ]; then $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 3; fi
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
exec > >(tee $OUT/log.txt) 2>&1
date; nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null
CFG=configs/tiny-synth-stage9-deep-gpu.yaml
OUTDIR=runs/tiny-synth-stage9-deep-gpu
rm -rf runs/grown8 $OUTDIR
$PY -m stamp.model.grow ${MODEL:-src/stamp/assets/tiny-synth} --layers 8 --out runs/grown8 2>&1 | grep grew
echo "== training ($(( $(date +%s) - T0 )) s)"
timeout 170 $PY -m stamp.cli train $CFG data.num_workers=$WORKERS run.steps=$STEPS run.max_minutes=$TRAIN_MIN \
  ${EXTRA:-} --no-progress 2>&1 | grep -E "time limit|last checkpoint|rror" | tail -3
echo "train rc ${PIPESTATUS[0]} ($(( $(date +%s) - T0 )) s)"
awk -F, '$3=="samples_per_s"{n++; s+=$4} END{if(n) print "mean samples/s", s/n, "over", n, "windows"}' $OUTDIR/metrics.csv
CK=$(ls -d $OUTDIR/checkpoints/step_* 2>/dev/null | tail -1); echo "last checkpoint $CK"
cp $OUTDIR/metrics.csv $OUT/ 2>/dev/null
[ -n "$CK" ] && $PY -m stamp.models $CK/model --out /tmp/export9/model --force 2>&1 | grep wrote && { tar -C /tmp/export9 -cf - model | split -b 15m - $OUT/model.tar.part-; }
echo "== done ($(( $(date +%s) - T0 )) s)"
