"""Paired statistics for seed-paired sweeps (filled in by the statistics layer)."""
