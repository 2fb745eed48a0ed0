"""secure_agg: transport-agnostic pairwise-mask secure aggregation (SecAgg / SecAgg+). No torch."""

__version__ = "0.1.0"
PROJECT = "privfed"

from secure_agg.errors import (ConsistencyError, DuplicateClientError, IntegrityError, InvalidMessage,  # noqa: E402
                               ProtocolAbort, ReplayError, SecAggError, SecretDisclosureError, StageOrderError,
                               ThresholdError)
from secure_agg.session import SecAggParams, SecureSumResult, secure_sum_in_process  # noqa: E402

__all__ = ["PROJECT", "__version__", "SecAggParams", "SecureSumResult", "secure_sum_in_process", "SecAggError",
           "ProtocolAbort", "ThresholdError", "InvalidMessage", "ReplayError", "DuplicateClientError",
           "StageOrderError", "ConsistencyError", "SecretDisclosureError", "IntegrityError"]
