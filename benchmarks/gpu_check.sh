#!/usr/bin/env bash
# One call on a lent GPU (H100/H200): the engine's CUDA checks, then issue 6's benchmark (VGG-style
# widths 16/32/64 and 64/128/256, batch 512, 32x32x3 synthetic images: the engine end to end, a
# per-seed DataLoader loop, step variants, a profile). Budget: < 8.5 minutes; the table is printed last.
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine, from the repository root
#   bash benchmarks/gpu_check.sh --dry-run  # anywhere: tiny sizes on CPU, checks the script itself
#   bash benchmarks/gpu_check.sh --plan moments --skip-checks  # the moment reduction, eager vs compiled (~3 min)
#
# The JSON goes to $OUT/gpu.json when OUT is set (the device tool's output folder), else benchmarks/.
# The checks read data/cache/mnist1d.npz (carry it, or have the mnist1d package installed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ] && PY=.venv/bin/python
export PYTHONUNBUFFERED=1
STAMP=$(date -u +%Y%m%d-%H%M)
if [ "${1:-}" = "--dry-run" ]; then
  $PY benchmarks/bench_gpu.py --dry-run --out "${TMPDIR:-/tmp}/gpu-dryrun-$STAMP.json"
  exit
fi
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name(0))"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true
JSON=${OUT:+$OUT/gpu.json}
JSON=${JSON:-benchmarks/gpu-$STAMP.json}
timeout $(( ${BUDGET_S:-400} + 100 )) $PY benchmarks/bench_gpu.py --budget-s "${BUDGET_S:-400}" --out "$JSON" "$@"
