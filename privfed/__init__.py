"""privfed: federated training of image diffusion models with DP-SGD and secure aggregation."""

__version__ = "0.1.0"
