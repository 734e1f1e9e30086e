#!/usr/bin/env bash
# One lent GPU session's checks and speed figures, in order (about 7 minutes on one H200):
#   1. the CLI on the GPU: bf16-mixed training, then sampling from its checkpoint
#   2. benchmarks/gpu.py: the bf16 check, host-device waits a step, training chars/s fp32 and
#      bf16-mixed (Lightning vs plain), sampling chars/s
#   3. benchmarks/optimizer_step.py: the fused AdamW (charlm's) against torch's default in a step
#   4. benchmarks/gpu_profile.py: each whole run cut into phases (set-up, first steps, steady
#      state, last steps and end), the whole-run and steady ratios, and a profile of each loop
# The regularisation study (docs/results.md, "How the recipe was chosen") is a session of its own.
# Usage: benchmarks/gpu_session.sh DATA OUTDIR   (python3 must hold torch with CUDA and lightning)
set -u
data=$1 out=$2
export PYTHONPATH=$PWD:${PYTHONPATH:-} CHARLM_CACHE=/tmp/charlm-cache PYTHONUNBUFFERED=1
export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 PYTHONWARNINGS=ignore
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)"
timeout 60 python3 -m charlm train --data "$data" --accelerator gpu --precision bf16-mixed \
    --num-layers 2 --hidden-size 512 --batch-size 64 --max-steps 200 --eval-every 100 \
    --out /tmp/cli-run --json 2>&1 | tail -2 | tee "$out/cli.log"
timeout 30 python3 -m charlm sample /tmp/cli-run/best.ckpt --length 200 --seed 1 2>&1 | tee -a "$out/cli.log"
timeout 270 python3 benchmarks/gpu.py --data "$data" --steps 300 --repeats 3 --sample-length 500 \
    2>&1 | grep -v Warning | tee "$out/gpu.log"
timeout 60 python3 benchmarks/optimizer_step.py --device cuda --configs lstm:512:2,lstm:1024:3 \
    --batch-size 64 --precision bf16-mixed --steps 100 2>&1 | tee "$out/optimizer.log"
timeout 150 python3 benchmarks/gpu_profile.py --data "$data" --steps 300 --repeats 2 \
    --tables "$out" 2>&1 | grep -v -E "Warning|USDT" | tee "$out/profile.log"
