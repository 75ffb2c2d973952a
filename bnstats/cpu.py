"""Reproducible CPU numerics: the instruction set of torch's CPU kernels, pinned before torch picks it.

Why: PyTorch's CPU kernels are vectorised, and the vector width they are compiled for (AVX2: 8 floats,
AVX-512: 16) decides the order in which float32 sums accumulate, hence the last bits of every reduction,
which training amplifies into different accuracies (measured on an AVX-512 host: the reference study's
MLP run ends at 68.4% test accuracy with the host's own kernels and 69.2% with AVX2 kernels). Three
libraries inside torch choose their kernels from the CPU they find, each once per process:

- ATen, PyTorch's own kernels (elementwise ops, reductions, batch norm, softmax): ``ATEN_CPU_CAPABILITY``,
  read at the first kernel dispatch of the process;
- oneDNN (convolutions): ``ONEDNN_MAX_CPU_ISA``, read at its first use;
- MKL (the matrix products of linear layers): ``MKL_CBWR`` (its conditional numerical reproducibility
  branch), read at its first call. MKL's default code path also differs between Intel and AMD processors
  of the same instruction set, so only its ``COMPATIBLE`` branch gives the same bits on both.

:data:`PIN` sets all three (``avx2`` / ``AVX2`` / ``COMPATIBLE``): every x86-64 CPU of the last decade runs
these kernels, and the same inputs give the same bits on all of them. Measured (``benchmarks/README.md``,
"CPU instruction set"): with the pin, one epoch of the reference study's MLP and CNN gives bitwise
identical losses and moments natively on an Intel AVX-512 host and under qemu emulating an AMD EPYC-Rome
(AVX2, no AVX-512) and an Intel Haswell; without MKL's branch pinned the emulated AMD differs.

bnstats applies the pin when it is imported (:func:`apply_from_env`, called by ``bnstats/__init__.py``),
before it imports torch, so every process that imports bnstats first is pinned: the command line, the
local pool's fork server and workers, submitit jobs. A process that ran a torch op before importing
bnstats keeps the kernels torch chose then; every run row records what decided its bits
(:func:`state`), so the record says so. ``engine.cpu_isa = "native"`` (or ``BNSTATS_CPU_ISA=native`` in
the environment) lifts the pin for speed: each worker then uses its CPU's best kernels, and runs are
reproducible only on CPUs like the one that trained them.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

MODES = ("avx2", "native")
ENV_MODE = "BNSTATS_CPU_ISA"
ENV_PINNED = "BNSTATS_CPU_PINNED"  # the variables bnstats set (inherited by child processes with them)
PIN = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "COMPATIBLE"}

# MKL's branch codes (mkl_cbwr.h), for reading back the branch MKL actually uses.
_MKL_BRANCHES = {0: "OFF", 1: "OFF", 2: "AUTO", 3: "COMPATIBLE", 4: "SSE2", 6: "SSSE3", 7: "SSE4_1",
                 8: "SSE4_2", 9: "AVX", 10: "AVX2", 11: "AVX512_MIC", 12: "AVX512", 13: "AVX512_MIC_E1",
                 14: "AVX512_E1"}


def check_mode(mode: Any, field: str = "engine.cpu_isa") -> str:
    if mode not in MODES:
        raise ValueError(f"{field}: expected one of {', '.join(map(repr, MODES))}, got {mode!r}")
    return mode


def apply(mode: str) -> None:
    """Set (``"avx2"``) or remove (``"native"``) the pinning variables in this process's environment.

    Takes effect for the libraries that have not chosen their kernels yet in this process (all of them,
    in a fresh worker), and for every process started from it afterwards. ``"native"`` removes only what
    bnstats set (recorded in ``BNSTATS_CPU_PINNED``), so a variable a user set by hand stays.
    """
    check_mode(mode)
    os.environ[ENV_MODE] = mode
    pinned = set(filter(None, os.environ.get(ENV_PINNED, "").split(",")))
    for key, value in PIN.items():
        if mode == "avx2":
            if os.environ.get(key) != value:
                pinned.add(key)
            os.environ[key] = value
        elif key in pinned:
            if os.environ.get(key) == value:
                del os.environ[key]
            pinned.discard(key)
    if pinned:
        os.environ[ENV_PINNED] = ",".join(sorted(pinned))
    else:
        os.environ.pop(ENV_PINNED, None)


def apply_from_env() -> str:
    """Apply ``BNSTATS_CPU_ISA`` (default ``"avx2"``); returns the mode. Called when bnstats is imported."""
    mode = os.environ.get(ENV_MODE, "avx2")
    apply(check_mode(mode, ENV_MODE))
    return mode


def _mkl_branch() -> str:
    """The branch MKL computes with (read from MKL itself), or "" where torch has no MKL."""
    import torch

    path = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    try:
        get = ctypes.CDLL(path).mkl_serv_cbwr_get
    except (OSError, AttributeError):
        return ""
    get.restype = ctypes.c_int
    code = get(1) & 0xFFFF  # MKL_CBWR_BRANCH; the STRICT flag is bit 16
    return _MKL_BRANCHES.get(code, str(code))


def state() -> dict[str, Any]:
    """What decides the bits of this process's CPU arithmetic, as recorded in every run row.

    ``cpu_isa`` (the requested mode), ``cpu_capability`` (the ATen kernels torch dispatches to, read
    from torch), ``onednn_max_isa`` (the oneDNN limit in the environment; oneDNN reads it at its first
    use and offers no way to read it back), ``mkl_branch`` (read from MKL) and ``torch_threads``.
    """
    import torch

    return {
        "cpu_isa": os.environ.get(ENV_MODE, "avx2"),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_max_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "native"),
        "mkl_branch": _mkl_branch(),
        "torch_threads": torch.get_num_threads(),
    }


#: Fields of :func:`state` that must match for a bitwise reproduction claim (besides the torch version).
BITWISE_FIELDS = ("cpu_capability", "onednn_max_isa", "mkl_branch", "torch_threads")
