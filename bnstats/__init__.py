"""bnstats: seeded, paired architecture sweeps with statistics a paper can cite."""

__version__ = "0.1.0"
