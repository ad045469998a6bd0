#!/bin/bash
# Prepared for the next GPU session (NOT run yet), one call of about 9 minutes:
#   OUT=/tmp/gpu_out bash benchmarks/gpu_session_4.sh
# 1. pytest -m gpu (incl. the check that bf16 decoding builds no cuDNN attention plans); 2. what bounds
# training now: the model step alone (profile_train_step.py; again with the vision tower's per-image
# attention, and the vision tower alone: bench_vision_attention.py) and the data loader alone
# (bench_loader.py, 13 workers); 3. stamp bench's mask pass in bf16 again (the earlier bf16 figures
# carried cuDNN plan builds) and the request part; 4. training from the bundled weights for the time
# left before END_S (configs/tiny-synth-stage3-gpu.yaml with fresh samples, data.seed 5), exported in
# bf16 to $OUT/model.tgz. Each part has its own time limit; a failure does not stop the next part.
set -u
END_S=${END_S:-540}
PY=${PY:-python3}
source "$(dirname "$0")/gpu_preamble.sh"
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
exec > >(tee $OUT/log.txt) 2>&1
date; nvidia-smi --query-gpu=name --format=csv,noheader; nproc
echo "== pytest -m gpu"
timeout 90 $PY -m pytest -m gpu -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tail -4
echo "== model step alone ($(left) s left)"
timeout 50 $PY benchmarks/profile_train_step.py configs/tiny-synth-stage3-gpu.yaml model.path=src/stamp/assets/tiny-synth \
  ${EXTRA:-} --steps 3 --warmup 3 --out $OUT/profile_train 2>&1 | grep "per step"
echo "== the same step with transformers' image-by-image vision attention ($(left) s left)"
STAMP_VISION_ATTENTION=per_image timeout 50 $PY benchmarks/profile_train_step.py configs/tiny-synth-stage3-gpu.yaml \
  model.path=src/stamp/assets/tiny-synth ${EXTRA:-} --steps 3 --warmup 3 --out $OUT/profile_train_per_image 2>&1 | grep "per step"
echo "== vision tower alone, packed vs per image ($(left) s left)"
timeout 40 $PY benchmarks/bench_vision_attention.py --images 64 --device cuda --bf16 --repeats 5 2>&1 | grep -v "Loading weights"
echo "== data loader alone ($(left) s left)"
timeout 60 $PY benchmarks/bench_loader.py configs/tiny-synth-stage3-gpu.yaml model.path=src/stamp/assets/tiny-synth \
  ${EXTRA:-} --batches 60 2>&1 | grep -E "loader|building"
echo "== bench: mask pass bf16, request ($(left) s left)"
timeout 120 $PY -m stamp.cli bench --device cuda --dtypes bf16 --n 64,256,1024 --ar-repeats 1 --ar-budget 10 --requests 3 \
  --json $OUT/bench_cuda.json --markdown 2>&1 | grep -v "Loading weights"
TRAIN_S=$(( $(left) - 25 ))
MS=$(grep -o "wall [0-9.]*" $OUT/profile_train/profile.txt 2>/dev/null | awk '{print $2}'); MS=${MS:-150}
STEPS=$($PY -c "print(max(0, int(($TRAIN_S - 25) * 1000 / ($MS * 1.5) / 50) * 50))")
echo "== training: $STEPS steps, at most $TRAIN_S s ($(left) s left)"
if [ $STEPS -ge 100 ]; then
  timeout $((TRAIN_S + 15)) $PY -m stamp.cli train configs/tiny-synth-stage3-gpu.yaml model.path=src/stamp/assets/tiny-synth \
    data.seed=5 optim.lr=3e-4 run.out_dir=runs/gpu4 run.steps=$STEPS run.max_minutes=$($PY -c "print(($TRAIN_S - 8) / 60)") \
    ${EXTRA:-} --no-progress; echo "train rc $?"
  CK=$(ls -d runs/gpu4/checkpoints/step_* | tail -1); echo "last checkpoint $CK"
  cp runs/gpu4/metrics.csv $OUT/
  $PY -m stamp.models $CK/model --out /tmp/export/model --force && tar -C /tmp/export -czf $OUT/model.tgz model
fi
echo "== done ($(( $(date +%s) - T0 )) s)"
