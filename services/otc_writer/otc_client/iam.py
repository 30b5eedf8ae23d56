"""IAM access tokens (apikey grant), cached and refreshed before they expire.

Like IBM's SDK core, the token is refreshed once 80 % of its lifetime (``exp - iat`` read from the
JWT, else ``expires_in``) has passed. Many concurrent callers share one refresh (a lock with a
re-check inside). A 401 from the API invalidates exactly the token that was refused, so a burst of
401s still causes a single refresh.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from services.otc_writer.otc_client.errors import (
    TRANSACTION_HEADER,
    IamUnavailableError,
    ibm_message,
)
from services.otc_writer.otc_client.resilience import Clock, read_bounded

log = logging.getLogger(__name__)

APIKEY_GRANT = "urn:ibm:params:oauth:grant-type:apikey"
REFRESH_AT = 0.8


@dataclass(frozen=True)
class _Token:
    value: str
    refresh_at: float
    """Monotonic time after which a new token is fetched."""
    expires_at: float


def _jwt_lifetime(token: str) -> float | None:
    """``exp - iat`` of a JWT, read without verification (IBM's SDK does the same)."""
    try:
        payload = token.split(".")[1]
        claims: Any = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        lifetime = float(claims["exp"]) - float(claims["iat"])
    except (IndexError, KeyError, TypeError, ValueError):
        return None
    return lifetime if lifetime > 0 else None


class IamTokenManager:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        iam_url: str,
        api_key: str,
        *,
        timeout_s: float = 10.0,
        max_body_bytes: int = 64 * 1024,
        clock: Clock = time.monotonic,
    ) -> None:
        self._session = session
        self._url = iam_url.rstrip("/") + "/identity/token"
        self._api_key = api_key
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_body = max_body_bytes
        """A token answer is a few KiB: a larger one is not read (IAM is unwell, or not IAM)."""
        self._clock = clock
        self._token: _Token | None = None
        self._lock = asyncio.Lock()
        self.refreshes = 0
        self.rejected: str | None = None
        """Why IAM refused our API key at the last attempt (readiness reports it), else None."""

    async def token(self) -> str:
        current = self._token
        if current is not None and self._clock() < current.refresh_at:
            return current.value
        async with self._lock:
            current = self._token
            if current is not None and self._clock() < current.refresh_at:
                return current.value
            self._token = await self._fetch()
            return self._token.value

    def invalidate(self, refused: str) -> None:
        """Forget ``refused`` (answered 401); a newer token fetched meanwhile is kept."""
        if self._token is not None and self._token.value == refused:
            self._token = None

    async def _fetch(self) -> _Token:
        started = self._clock()
        form = {"grant_type": APIKEY_GRANT, "apikey": self._api_key, "response_type": "cloud_iam"}
        try:
            async with self._session.post(
                self._url, data=form, headers={"Accept": "application/json"}, timeout=self._timeout
            ) as resp:
                trace = resp.headers.get(TRANSACTION_HEADER)
                raw, whole = await read_bounded(resp, self._max_body)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise IamUnavailableError(
                f"IAM unreachable: {type(exc).__name__}", method="POST", path="/identity/token"
            ) from None
        body = _json_or_none(raw) if whole else None
        if status != 200 or not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
            message, code = ibm_message(body)
            usable = "no usable token in the answer" if whole else f"an answer over {self._max_body} bytes"
            reason = f"IAM token request failed: {message or usable}"
            if status in (400, 401, 403):
                self.rejected = f"{status} {reason}"
            raise IamUnavailableError(
                reason,
                status=status,
                code=code,
                transaction_id=trace,
                method="POST",
                path="/identity/token",
            )
        value: str = body["access_token"]
        lifetime = _jwt_lifetime(value)
        if lifetime is None:
            expires_in = body.get("expires_in")
            lifetime = float(expires_in) if isinstance(expires_in, int | float) and expires_in > 0 else 600.0
        self.refreshes += 1
        self.rejected = None
        log.info("IAM token obtained", extra={"lifetime_s": lifetime})
        return _Token(value=value, refresh_at=started + REFRESH_AT * lifetime, expires_at=started + lifetime)


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None
