"""dp: DP-SGD through Opacus, noise calibration, DP events and accountants for privfed."""

__version__ = "0.1.0"
PROJECT = "privfed"
