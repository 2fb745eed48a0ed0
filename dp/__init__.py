"""dp: DP-SGD through Opacus, noise calibration, DP events and accountants for privfed.

Light modules (events, accountant, calibrate, budget, statement) are imported eagerly; the torch/Opacus ones
(``dpsgd``, ``client_level``) lazily on first attribute access, so ``import dp.accountant`` stays cheap.
"""

__version__ = "0.1.0"
PROJECT = "privfed"

from dp.events import GaussianEvent  # noqa: E402
from dp.accountant import KINDS, PrivacyAccountant, UnknownAccountant  # noqa: E402
from dp.calibrate import CalibrationError, calibrate_noise_multiplier, default_delta  # noqa: E402
from dp.budget import BudgetExceeded, check_budget, enforce_budget, validate_dp_args  # noqa: E402

_LAZY = {
    "EpsilonModel": "dp.dpsgd", "PrivateTraining": "dp.dpsgd", "make_private": "dp.dpsgd",
    "per_example_diffusion_loss": "dp.dpsgd", "GRAD_SAMPLE_MODES": "dp.dpsgd",
    "DEFAULT_GRAD_SAMPLE_MODE": "dp.dpsgd", "UnclippedGradientError": "dp.dpsgd",
    "UnverifiedGradSampleMode": "dp.dpsgd", "make_conv_inputs_contiguous": "dp.conv_layout",
    "client_level_event": "dp.client_level",
    "clip_update": "dp.client_level", "aggregate_noise": "dp.client_level",
    "signal_to_noise_bound": "dp.client_level",
    "privacy_statement": "dp.statement",
}

__all__ = ["PROJECT", "__version__", "GaussianEvent", "KINDS", "PrivacyAccountant", "UnknownAccountant",
           "CalibrationError", "calibrate_noise_multiplier", "default_delta", "BudgetExceeded", "check_budget",
           "enforce_budget", "validate_dp_args", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dp' has no attribute {name!r}")
