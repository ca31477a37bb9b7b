#!/usr/bin/env bash
# GPU checks in one script (for a machine with one NVIDIA GPU and a python3 that has torch + timm):
#  1. step overhead with bf16 autocast and channels-last, real-width ResNet-18 (CIFAR stem), batch 256:
#     prints full/bare ratio and images/s for Suave and Daino;
#  2. the same in fp32 without channels-last, for comparison on the same card;
#  3. a short digits Suave run on CUDA end to end (bf16 autocast, fused SGD) and `semiclust eval`;
#  4. the same through torchrun with one process (NCCL process group, DDP, SyncBatchNorm on).
# Missing pure-Python dependencies can be provided as wheels in .whl/ (installed to /tmp/site).
set -euo pipefail
cd "$(dirname "$0")/.."
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
OUT=${OUT:-$(mktemp -d)}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.version.cuda)"

if [ -z "${SKIP_OVERHEAD:-}" ]; then
echo "== 1. step overhead, bf16 + channels-last =="
python3 benchmarks/step_overhead.py --device cuda --precision bf16 --channels-last --full-width --batch 256 --warmup 3 --repeats 10
echo "== 2. step overhead, fp32 =="
python3 benchmarks/step_overhead.py --device cuda --precision fp32 --full-width --batch 256 --warmup 3 --repeats 10
fi
echo "== 3. digits Suave on CUDA =="
python3 -m semiclust train digits_suave --out "$OUT/digits" --overwrite --set runtime.device=cuda \
  --set runtime.progress=plain --set schedule.epochs=30 --set eval.every_epochs=10
python3 -m semiclust eval --checkpoint "$OUT/digits/checkpoints/final.pt" --json
echo "== 4. torchrun, 1 process, NCCL + SyncBatchNorm =="
python3 -m torch.distributed.run --standalone --nproc_per_node 1 -m semiclust train digits_daino --out "$OUT/ddp" \
  --overwrite --set runtime.device=cuda --set runtime.sync_batchnorm=true --set runtime.progress=plain \
  --set schedule.epochs=10 --set checkpoint.every_steps=50
python3 -m semiclust plot "$OUT/ddp" --out "$OUT/ddp_curves.png"
