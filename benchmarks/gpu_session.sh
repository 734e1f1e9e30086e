#!/usr/bin/env bash
# One lent GPU session's checks and figures, in order (about 8 minutes on one H100):
#   1. the CLI on the GPU: bf16-mixed training, then sampling from its checkpoint
#   2. benchmarks/gpu.py: training chars/s fp32 and bf16-mixed, Lightning vs plain, sampling
#   3. benchmarks/regularisation.py, both plans at the CPU's step budgets, variants in parallel
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
timeout 200 python3 benchmarks/gpu.py --data "$data" --steps 150 --repeats 2 --sample-length 500 \
    2>&1 | grep -v Warning | tee "$out/gpu.log"
timeout 300 python3 benchmarks/regularisation.py --plan long --accelerator gpu --parallel 10 \
    --data "$data" > "$out/long.log" 2>&1 &
timeout 300 python3 benchmarks/regularisation.py --plan quick --accelerator gpu --parallel 8 \
    --data "$data" > "$out/quick.log" 2>&1 &
wait
grep -v '"progress"' "$out/quick.log" | tail -12
grep -v '"progress"' "$out/long.log" | tail -14
