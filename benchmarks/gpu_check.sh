#!/usr/bin/env bash
# One call on a lent GPU (H100/H200): correctness checks of the stacked engine on CUDA, then the
# issue-6 benchmark (2-D CNN widths 16/32/64 and 64/128/256, batch 512, 32x32x3 synthetic inputs,
# 64 seeds stacked in fp32 and bf16 vs a per-seed DataLoader loop). Budget: < 8 minutes.
# The short table is printed last; the JSON lands in benchmarks/.
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine, from the repository root
#   bash benchmarks/gpu_check.sh --dry-run  # anywhere: tiny sizes on CPU, checks the script itself
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
[ -x .venv/bin/python ] && PY=.venv/bin/python
DRY=""
if [ "${1:-}" = "--dry-run" ]; then DRY="--dry-run"; fi
export OMP_NUM_THREADS=1
STAMP=$(date -u +%Y%m%d-%H%M)
if [ -z "$DRY" ]; then
  $PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name(0))"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  OUT=benchmarks/gpu-$STAMP.json
  # CPU cases are skipped here (measured on CPU machines); only the checks and the GPU cases run.
  timeout 450 $PY -m bnstats.bench --gpu --no-cpu --gpu-seeds 16 64 --gpu-steps 40 --out "$OUT"
else
  OUT=${TMPDIR:-/tmp}/gpu-dryrun-$STAMP.json
  $PY -m bnstats.bench --gpu --dry-run --no-cpu --out "$OUT"
fi
echo "JSON: $OUT"
