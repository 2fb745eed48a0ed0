"""secure_agg: transport-agnostic pairwise-mask secure aggregation (SecAgg / SecAgg+). No torch."""

__version__ = "0.2.0"
PROJECT = "privfed"

from secure_agg import codec  # noqa: E402,F401
from secure_agg.degree_bound import required_degree  # noqa: E402
from secure_agg.errors import (BadShareError, ConsistencyError, DuplicateClientError,  # noqa: E402
                               IncompleteRevealError, IntegrityError, InvalidMessage, LowOrderKeyError,
                               PolicyViolation, ProtocolAbort, ReplayError, SecAggError, SecretDisclosureError,
                               StageOrderError, ThresholdError, UnknownIdentityError)
from secure_agg.params import SecAggParams, validate_params  # noqa: E402
from secure_agg.policy import ProtocolPolicy  # noqa: E402
from secure_agg.roster import Roster  # noqa: E402
from secure_agg.server import SecureSumResult, ServerSession  # noqa: E402
from secure_agg.session import secure_sum_in_process  # noqa: E402
from secure_agg.site import SiteSession  # noqa: E402

__all__ = ["PROJECT", "__version__", "SecAggParams", "validate_params", "ProtocolPolicy", "Roster",
           "ServerSession", "SiteSession", "SecureSumResult", "secure_sum_in_process", "required_degree", "codec",
           "SecAggError", "ProtocolAbort", "ThresholdError", "PolicyViolation", "InvalidMessage", "ReplayError",
           "DuplicateClientError", "LowOrderKeyError", "StageOrderError", "ConsistencyError",
           "SecretDisclosureError", "IncompleteRevealError", "IntegrityError", "UnknownIdentityError",
           "BadShareError"]
