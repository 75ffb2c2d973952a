#!/usr/bin/env bash
# Do bnstats' pinned CPU kernels give the same bits on other x86-64 CPUs? One epoch of the reference
# study's MLP and CNN (relu, before) natively, then under qemu's user-mode emulation of other CPU models
# (an AMD EPYC-Rome and an Intel Haswell: AVX2, no AVX-512), with the pin (bnstats' default) and with MKL's
# branch left to MKL. Prints one line per (CPU, setting): the test losses and the last moment's variance.
# Needs Debian's qemu-user (apt-get install -y qemu-user); ~3 min per emulated run on one core.
#
#   bash benchmarks/cpu_isa_check.sh              # from the repository root, with bnstats importable
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
REAL=$($PY -c "import os, sys; print(os.path.realpath(sys.executable))")
SITE=$($PY -c "import site; print(site.getsitepackages()[0])")
export PYTHONPATH="$PWD:$SITE"
probe=$(mktemp --suffix=.py)
trap 'rm -f "$probe"' EXIT
cat > "$probe" <<'PY'
import torch, bnstats
torch.set_num_threads(1)
from bnstats import config, cpu
from bnstats.train import train
runs = config.load("configs/reference-mnist1d.toml", overrides=["train.epochs=1", 'data.root="data/cache"']).runs()
out = []
for arch in ("mlp", "cnn"):
    r = next(r for r in runs if r.model.arch == arch and r.model.placement == "before" and r.model.activation == "relu")
    o = train(r)
    out.append(f"{arch} test_loss={o.run['test_loss']!r} var={o.moments[-1]['var']!r}")
s = cpu.state()
print(s["cpu_capability"], s["mkl_branch"], " ".join(out))
PY
$PY -c "from bnstats import data; data.load('mnist1d', 'data/cache')"  # the dataset cache, built natively
for setting in pinned mkl-auto; do
  extra=()
  [ "$setting" = mkl-auto ] && extra=(env -u MKL_CBWR ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 BNSTATS_CPU_ISA=native)
  echo "native $setting: $("${extra[@]}" "$REAL" "$probe")"
  for model in EPYC-Rome Haswell; do
    echo "qemu $model $setting: $("${extra[@]}" qemu-x86_64 -cpu "$model" "$REAL" "$probe" 2>/dev/null)"
  done
done
