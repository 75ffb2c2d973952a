"""bnstats: seeded, paired architecture sweeps with statistics a paper can cite."""

from . import cpu as _cpu

# Before anything imports torch: pin the instruction set of torch's CPU kernels (bnstats/cpu.py), so the
# same config and seed give the same bits on any x86-64 machine.
_cpu.apply_from_env()

__version__ = "0.1.0"
