#!/bin/bash
# The third short GPU session (2026-11-26), one call of about 5 minutes:
#   OUT=/tmp/gpu_out OLD_SRC=old_src/src bash benchmarks/gpu_session_3.sh
# 1. pytest -m gpu on the new training step (the CPU-planned batch, commit 84d96fa); 2. one training step
# profiled before (OLD_SRC: `git archive 5acb0d4 src | tar -x -C old_src`) and after that change, same
# machine, same config; 3. stage 3's weights trained on for the time left before END_S with fresh samples
# (data.seed 4), exported in bf16 to $OUT/model.tgz.
set -u
END_S=${END_S:-270}
PY=${PY:-python3}
source "$(dirname "$0")/gpu_preamble.sh"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
NEW=/tmp/site:$PWD/src
exec > >(tee $OUT/log.txt) 2>&1
date; nvidia-smi --query-gpu=name --format=csv,noheader
echo "== pytest -m gpu"
PYTHONPATH=$NEW timeout 70 $PY -m pytest -m gpu -q -p no:cacheprovider tests/test_cuda.py -x 2>&1 | tail -4
for which in old new; do
  [ $which = old ] && P=/tmp/site:$PWD/${OLD_SRC:-old_src/src} || P=$NEW
  echo "== profile a training step: $which code ($(left) s left)"
  PYTHONPATH=$P timeout 50 $PY benchmarks/profile_train_step.py configs/tiny-synth-stage3-gpu.yaml \
    model.path=src/stamp/assets/tiny-synth ${EXTRA:-} --steps 3 --warmup 3 --out $OUT/profile_$which 2>&1 | grep "per step"
done
MS=$(grep -o "wall [0-9.]*" $OUT/profile_new/profile.txt | awk '{print $2}'); MS=${MS:-300}
TRAIN_S=$(( $(left) - 25 ))
STEPS=$($PY -c "print(max(0, int(($TRAIN_S - 25) * 1000 / ($MS * 1.25) / 50) * 50))")
echo "== stage 4 (GPU): $STEPS steps at ~$MS ms, at most $TRAIN_S s ($(left) s left)"
if [ $STEPS -ge 100 ]; then
  PYTHONPATH=$NEW timeout $((TRAIN_S + 15)) $PY -m stamp.cli train configs/tiny-synth-stage3-gpu.yaml \
    model.path=runs/tiny-synth-stage3/model-bf16 data.seed=4 optim.lr=3e-4 run.out_dir=runs/tiny-synth-stage4-gpu \
    run.steps=$STEPS run.max_minutes=$($PY -c "print(($TRAIN_S - 8) / 60)") ${EXTRA:-} --no-progress; echo "train rc $?"
  CK=$(ls -d runs/tiny-synth-stage4-gpu/checkpoints/step_* | tail -1); echo "last checkpoint $CK"
  cp runs/tiny-synth-stage4-gpu/metrics.csv $OUT/
  PYTHONPATH=$NEW $PY -m stamp.models $CK/model --out /tmp/export/model --force && tar -C /tmp/export -czf $OUT/model.tgz model
fi
echo "== done ($(( $(date +%s) - T0 )) s)"
