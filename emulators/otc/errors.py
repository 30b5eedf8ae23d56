"""IBM Cloud style API errors.

The Toolchain API answers errors as ``{"errors":[{"code","message","more_info"}],"trace","status_code"}``
with the same trace id in the ``X-Global-Transaction-ID`` header (the IBM SDK core reads
``errors[0].message`` and that header into ``ApiException``). IAM uses its own shape, see ``iam.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from emulators.otc.request_keys import TRACE

TRANSACTION_HEADER = "X-Global-Transaction-ID"
MORE_INFO = "https://cloud.ibm.com/apidocs/toolchain"

_DEFAULT_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    500: "internal_server_error",
    502: "bad_gateway",
    503: "service_unavailable",
    504: "gateway_timeout",
}


class ApiError(Exception):
    """An error answer of the Toolchain API; raised anywhere below the error middleware."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or _DEFAULT_CODES.get(status, "error")
        self.headers = dict(headers or {})


def error_body(status: int, message: str, code: str, trace: str) -> dict[str, Any]:
    return {
        "errors": [{"code": code, "message": message, "more_info": MORE_INFO}],
        "trace": trace,
        "status_code": status,
    }


def transaction_id(request: web.Request) -> str:
    """One id per request: taken from the client's header when sent, as IBM's gateway does."""
    existing: str | None = request.get(TRACE)
    if existing is not None:
        return existing
    trace = request.headers.get(TRANSACTION_HEADER) or str(uuid.uuid4())
    request[TRACE] = trace
    return trace


def error_response(request: web.Request, err: ApiError) -> web.Response:
    trace = transaction_id(request)
    headers = {**err.headers, TRANSACTION_HEADER: trace}
    return web.json_response(
        error_body(err.status, err.message, err.code, trace), status=err.status, headers=headers
    )
