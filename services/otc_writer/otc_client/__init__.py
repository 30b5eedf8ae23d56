"""Toolchain API v2 + IAM client used by otc-writer (docs/architecture.md §5)."""

from services.otc_writer.otc_client.client import OtcClient, OtcClientConfig, Tool
from services.otc_writer.otc_client.errors import (
    IamUnavailableError,
    OtcAmbiguousError,
    OtcCircuitOpenError,
    OtcConflictError,
    OtcEndlessListingError,
    OtcError,
    OtcMalformedError,
    OtcNotFoundError,
    OtcPermanentError,
    OtcRefusedError,
    OtcRetryableError,
    OtcTooLargeError,
    OtcUnavailableError,
)
from services.otc_writer.otc_client.iam import IamTokenManager

__all__ = [
    "IamTokenManager",
    "IamUnavailableError",
    "OtcAmbiguousError",
    "OtcCircuitOpenError",
    "OtcClient",
    "OtcClientConfig",
    "OtcConflictError",
    "OtcEndlessListingError",
    "OtcError",
    "OtcMalformedError",
    "OtcNotFoundError",
    "OtcPermanentError",
    "OtcRefusedError",
    "OtcRetryableError",
    "OtcTooLargeError",
    "OtcUnavailableError",
    "Tool",
]
