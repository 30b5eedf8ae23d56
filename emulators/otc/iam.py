"""Emulated IAM: ``POST /identity/token`` (apikey grant) and verification of the bearer tokens.

Tokens are JWTs signed HS256 with the emulator's secret (real IAM signs RS256; clients, including IBM's
SDK core, decode them without verifying, to read ``iat``/``exp`` and schedule a refresh at 80 % of the
lifetime). Error bodies follow IAM's shape ``{"errorCode": "BXNIM...", "errorMessage": ..., "context":
{...}}``; the codes are modelled on observed IAM answers (BXNIM0415E unknown key, BXNIM0109E missing
property, BXNIM0106E invalid value).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from emulators.otc.clock import Clock
from emulators.otc.errors import TRANSACTION_HEADER, ApiError
from emulators.otc.request_keys import TRACE
from emulators.otc.settings import OtcEmulatorSettings

APIKEY_GRANT = "urn:ibm:params:oauth:grant-type:apikey"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode_jwt(claims: dict[str, Any], secret: bytes) -> str:
    header = {"alg": "HS256", "typ": "JWT", "kid": "otc-emulator"}
    signing_input = ".".join(
        _b64(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
    )
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def decode_jwt(token: str, secret: bytes) -> dict[str, Any] | None:
    """The claims of a well-formed token with a valid signature, else None (expiry not checked)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        expected = hmac.new(secret, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(expected, _unb64(parts[2])):
            return None
        claims = json.loads(_unb64(parts[1]))
    except ValueError:
        return None
    return claims if isinstance(claims, dict) else None


class TokenIssuer:
    def __init__(self, settings: OtcEmulatorSettings, clock: Clock) -> None:
        self._settings = settings
        self._clock = clock

    def _key_id(self, api_key: str) -> str:
        return hashlib.sha256(api_key.encode()).hexdigest()[:32]

    def issue(self, api_key: str, issuer: str) -> dict[str, Any]:
        """The token response for a known API key (the caller has checked it)."""
        iat = int(self._clock.now())
        exp = iat + self._settings.token_ttl
        service_id = f"ServiceId-{uuid.UUID(self._key_id(api_key))}"
        claims: dict[str, Any] = {
            "iam_id": f"iam-{service_id}",
            "id": f"iam-{service_id}",
            "realmid": "iam",
            "sub": service_id,
            "sub_type": "ServiceId",
            "account": {"bss": self._settings.account_id, "valid": True},
            "iat": iat,
            "exp": exp,
            "iss": f"{issuer}/identity",
            "grant_type": APIKEY_GRANT,
            "scope": "ibm openid",
            "client_id": "default",
            "jti": str(uuid.uuid4()),
        }
        access = encode_jwt({**claims, "token_use": "access"}, self._settings.token_secret)
        refresh_claims = {**claims, "exp": iat + 30 * 24 * 3600, "jti": str(uuid.uuid4())}
        refresh = encode_jwt({**refresh_claims, "token_use": "refresh"}, self._settings.token_secret)
        return {
            "access_token": access,
            "refresh_token": refresh,
            "token_type": "Bearer",
            "expires_in": self._settings.token_ttl,
            "expiration": exp,
            "scope": "ibm openid",
        }

    def verify_bearer(self, authorization: str | None) -> dict[str, Any]:
        """Claims of a valid, unexpired access token, else ApiError 401."""
        if not authorization:
            raise ApiError(401, "Authorization header is missing", code="missing_token")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "Authorization header must be 'Bearer <IAM access token>'")
        claims = decode_jwt(token.strip(), self._settings.token_secret)
        if claims is None or claims.get("token_use") != "access":
            raise ApiError(401, "The IAM access token is not valid", code="invalid_token")
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or self._clock.now() >= exp:
            raise ApiError(401, "The IAM access token has expired", code="token_expired")
        return claims


def _iam_error(request: web.Request, status: int, code: str, message: str) -> web.Response:
    trace = request.get(TRACE) or str(uuid.uuid4())
    body = {
        "errorCode": code,
        "errorMessage": message,
        "context": {"requestId": trace, "requestType": "incoming.Identity_Token"},
    }
    return web.json_response(body, status=status, headers={TRANSACTION_HEADER: trace})


def token_handler(settings: OtcEmulatorSettings, issuer: TokenIssuer) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        if request.content_type != "application/x-www-form-urlencoded":
            return _iam_error(
                request, 400, "BXNIM0109E", "Content type must be application/x-www-form-urlencoded"
            )
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        grant_type = form.get("grant_type")
        api_key = form.get("apikey")
        if not grant_type:
            return _iam_error(
                request, 400, "BXNIM0109E", "Property missing or empty. Property name(s): 'grant_type'"
            )
        if grant_type != APIKEY_GRANT:
            return _iam_error(
                request,
                400,
                "BXNIM0106E",
                f"Validation of property 'grant_type' with value '{grant_type}' failed. "
                f"Valid values: '{APIKEY_GRANT}'",
            )
        response_type = form.get("response_type")
        if response_type not in (None, "cloud_iam"):
            return _iam_error(
                request,
                400,
                "BXNIM0106E",
                f"Validation of property 'response_type' with value '{response_type}' failed. "
                "Valid values: 'cloud_iam'",
            )
        if not api_key:
            return _iam_error(
                request, 400, "BXNIM0109E", "Property missing or empty. Property name(s): 'apikey'"
            )
        if not any(hmac.compare_digest(api_key.encode(), known.encode()) for known in settings.api_keys):
            return _iam_error(request, 400, "BXNIM0415E", "Provided API key could not be found.")
        base = settings.public_url or str(request.url.origin())
        return web.json_response(issuer.issue(api_key, base))

    return handle
