"""secure_agg: transport-agnostic pairwise-mask secure aggregation (SecAgg / SecAgg+). No torch."""

__version__ = "0.1.0"
PROJECT = "privfed"
