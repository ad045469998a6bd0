#!/bin/bash
# One short GPU session, as run on 2026-11-26 (docs/MODEL_CARD.md, docs/PERFORMANCE.md):
#   OUT=/tmp/gpu_out bash benchmarks/gpu_session.sh
# a 40-step calibration of configs/tiny-synth-gpu.yaml (stops the script if training fails), a run of
# the steps that fit TRAIN_S seconds at the measured rate (exported in bf16 to $OUT/model.tgz), stamp
# bench on CUDA, and a single-process FSDP run whose checkpoint must load. Logs and results land in $OUT.
# Uses the machine's python3 and packages with PYTHONPATH=src; wheels in .whl/ (e.g. pycocotools) are
# installed to /tmp/site first where the machine lacks them. Then: pytest -m gpu (tests/test_cuda.py).
set -u
TRAIN_S=${TRAIN_S:-270}
EXTRA=${EXTRA:-}   # (local dry runs: EXTRA="run.device=cpu data.num_workers=2 optim.batch_size=4")
PY=${PY:-python3}
if [ -d .whl ]; then $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 3; fi
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
exec > >(tee $OUT/log.txt) 2>&1
date; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc
$PY -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, torch.cuda.get_device_name())"
T0=$(date +%s)
echo "== calibration"
timeout 120 $PY -m stamp.cli train configs/tiny-synth-gpu.yaml run.out_dir=/tmp/cal run.steps=40 \
  run.log_every=10 optim.warmup_steps=10 $EXTRA --no-progress || { echo "CALIBRATION FAILED"; exit 4; }
grep samples_per_s /tmp/cal/metrics.csv
STEPS=$($PY -c "
import csv; r=[float(x['value']) for x in csv.DictReader(open('/tmp/cal/metrics.csv')) if x['name']=='samples_per_s']
rate=sorted(r[1:])[len(r[1:])//2]; print(int(rate*$TRAIN_S/64/100)*100 or 2)")
echo "== train $STEPS steps ($(( $(date +%s) - T0 )) s so far)"
timeout $((TRAIN_S + 60)) $PY -m stamp.cli train configs/tiny-synth-gpu.yaml run.steps=$STEPS \
  run.max_minutes=$($PY -c "print(($TRAIN_S+25)/60)") $EXTRA --no-progress; echo "train rc $?"
CK=$(ls -d runs/tiny-synth-gpu/checkpoints/step_* | tail -1); echo "last checkpoint $CK"
cp runs/tiny-synth-gpu/metrics.csv $OUT/ ; cp runs/tiny-synth-gpu/loss_curves.png $OUT/ 2>/dev/null
$PY -m stamp.models $CK/model --out /tmp/export/model --force && tar -C /tmp/export -czf $OUT/model.tgz model && ls -la $OUT
echo "== bench cuda ($(( $(date +%s) - T0 )) s so far)"
timeout 150 $PY -m stamp.cli bench --device cuda --json $OUT/bench_cuda.json --ar-repeats 1 --ar-budget 10 --requests 3 --markdown; echo "bench rc $?"
echo "== fsdp 1 process ($(( $(date +%s) - T0 )) s so far)"
timeout 70 $PY -m accelerate.commands.launch --config_file configs/accelerate/fsdp.yaml --num_processes 1 -m stamp.cli train \
  configs/tiny-synth.yaml run.out_dir=/tmp/fsdp run.steps=6 run.save_every=3 run.eval_every=0 optim.batch_size=4 \
  --no-progress && $PY -c "
from stamp.model.modeling import StampModel; m = StampModel.from_pretrained('/tmp/fsdp/checkpoints/step_0000006/model'); print('fsdp checkpoint loads', sum(p.numel() for p in m.parameters()))"
echo "fsdp rc $?"
echo "== done ($(( $(date +%s) - T0 )) s)"
