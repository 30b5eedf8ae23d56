"""Emulator settings: one frozen object, built by the CLI or the test harness and passed down."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

DEFAULT_ACCOUNT_ID = "a1b2c3d4e5f60718293a4b5c6d7e8f90"
DEFAULT_RESOURCE_GROUP_ID = "6a9a01f2cff54a7f966f803d92877123"


@dataclass(frozen=True, kw_only=True)
class OtcEmulatorSettings:
    host: str = "127.0.0.1"
    port: int = 8090
    api_keys: tuple[str, ...] = ()
    """API keys that ``POST /identity/token`` accepts; an empty tuple accepts none."""
    token_ttl: int = 3600
    """Access-token lifetime in seconds (IAM issues 3600)."""
    token_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    """HS256 key for the emulator's JWTs; random per process, so tokens do not survive a restart."""
    account_id: str = DEFAULT_ACCOUNT_ID
    region: str = "us-south"
    default_resource_group_id: str = DEFAULT_RESOURCE_GROUP_ID
    """Resource group given to toolchains seeded without one."""
    public_url: str | None = None
    """Base URL used in ``href`` fields; default: the scheme and host of each request."""
    tools_default_limit: int = 20
    """Page size of ``GET .../tools`` without ``limit`` (the real default is undocumented)."""
    max_limit: int = 200
    """Largest ``limit`` accepted on toolchain and tool lists (documented for toolchains)."""
    broker_url: str | None = None
    """Base URL of the broker API the platform driver calls (e.g. ``http://127.0.0.1:8080``)."""
    broker_id: str | None = None
    broker_secret: str | None = None
