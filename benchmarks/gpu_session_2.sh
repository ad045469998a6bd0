#!/bin/bash
# The second short GPU session (2026-11-26), one call of under 10 minutes:
#   OUT=/tmp/gpu_out bash benchmarks/gpu_session_2.sh
# 1. the opt-in CUDA tests (pytest -m gpu, tests/test_cuda.py); 2. where a training step's time goes
# (benchmarks/profile_train_step.py) and why bf16 decoding was slower than fp32 (profile_decode.py);
# 3. stage 3 of the bundled model (configs/tiny-synth-stage3-gpu.yaml, from the bundled weights) for the
# time left before END_S, exported in bf16 to $OUT/model.tgz; 4. stamp bench's request and batch parts on
# CUDA (not reached last time). Each part has its own time limit; a failure does not stop the next part.
set -u
END_S=${END_S:-540}   # seconds after the start by which everything must be done
PY=${PY:-python3}
source "$(dirname "$0")/gpu_preamble.sh"
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
exec > >(tee $OUT/log.txt) 2>&1
date; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc
$PY -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, torch.cuda.get_device_name())"
echo "== pytest -m gpu"
timeout 150 $PY -m pytest -m gpu -q -p no:cacheprovider tests/test_cuda.py -x 2>&1 | tail -25; echo "pytest rc ${PIPESTATUS[0]}"
echo "== profile a training step ($(left) s left)"
timeout 60 $PY benchmarks/profile_train_step.py configs/tiny-synth-stage3-gpu.yaml model.path=src/stamp/assets/tiny-synth \
  ${EXTRA:-} --steps 3 --warmup 3 --out $OUT/profile_train 2>&1 | grep -v -E "Loading weights" | head -60; echo "profile rc ${PIPESTATUS[0]}"
echo "== profile decoding ($(left) s left)"
timeout 45 $PY benchmarks/profile_decode.py --device cuda --steps 32 --out $OUT/profile_decode 2>&1 | grep -v "Loading weights" | head -120
echo "decode profile rc ${PIPESTATUS[0]}"
TRAIN_S=$(( $(left) - 110 ))   # leaves time for the export and the request bench
STEPS=$(( (TRAIN_S - 30) * 3 / 50 * 50 ))
echo "== stage 3: $STEPS steps, at most $TRAIN_S s ($(left) s left)"
if [ $STEPS -ge 100 ]; then
  timeout $((TRAIN_S + 20)) $PY -m stamp.cli train configs/tiny-synth-stage3-gpu.yaml model.path=src/stamp/assets/tiny-synth \
    run.steps=$STEPS run.max_minutes=$($PY -c "print(($TRAIN_S - 10) / 60)") ${EXTRA:-} --no-progress; echo "train rc $?"
  CK=$(ls -d runs/tiny-synth-stage3/checkpoints/step_* | tail -1); echo "last checkpoint $CK"
  cp runs/tiny-synth-stage3/metrics.csv $OUT/ ; cp runs/tiny-synth-stage3/loss_curves.png $OUT/ 2>/dev/null
  $PY -m stamp.models $CK/model --out /tmp/export/model --force && tar -C /tmp/export -czf $OUT/model.tgz model && ls -la $OUT
fi
echo "== bench request + batch on cuda ($(left) s left)"
timeout $(( $(left) > 20 ? $(left) : 20 )) $PY -m stamp.cli bench --device cuda --parts request --requests 3 \
  --json $OUT/bench_cuda_request.json --markdown; echo "bench rc $?"
echo "== done ($(( $(date +%s) - T0 )) s)"
