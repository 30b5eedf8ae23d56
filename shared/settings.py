"""Settings every service reads from the environment (docs/architecture.md §2).

Each service subclasses :class:`CommonSettings`; the resulting object is built once in ``main()``
and passed down, never read from a global.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    """Connection and runtime settings shared by all services."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", frozen=True)

    amqp_url: SecretStr = Field(default=SecretStr("amqp://guest:guest@127.0.0.1:5672/"))
    mongodb_url: SecretStr = Field(default=SecretStr("mongodb://127.0.0.1:27017/kabanero_otc"))
    http_host: str = "0.0.0.0"
    http_port: int = Field(default=8080, ge=0, le=65535)
    log_format: Literal["json", "text", "auto"] = "auto"
    log_level: str = "INFO"
    # Bounded first connection: a service that cannot reach its dependencies at start fails loudly.
    connect_timeout_s: float = Field(default=30.0, gt=0)
    publish_timeout_s: float = Field(default=10.0, gt=0)
    # A message waits unacked at most this long (an outage being held), then it is put back in its
    # queue: below RabbitMQ's consumer_timeout (30 min by default), which would close the channel.
    consumer_hold_limit_s: float = Field(default=900.0, gt=0)
    # The cyclic GC skips what has lived this long (shared/heap.py); 0 turns it off.
    gc_freeze_interval_s: float = Field(default=10.0, ge=0)
    gc_full_interval_s: float = Field(default=3600.0, ge=0)
    # One deadline for the whole shutdown, below the pods' terminationGracePeriodSeconds (30 s, k8s/).
    shutdown_timeout_s: float = Field(default=25.0, gt=0)


class SettingsError(Exception):
    """A missing or invalid setting; the message names the variables, never their values."""


SECRETS_DIR = "/run/secrets"
"""Where Kubernetes Secret volumes and compose secrets are usually mounted (``SECRETS_DIR`` overrides)."""


def secrets_dir() -> Path | None:
    """The directory of secret files, one per setting named like its variable (``BROKER_SECRET``,
    ``OTC_API_KEY``, ...); None when it does not exist. The environment wins over a file."""
    path = Path(os.environ.get("SECRETS_DIR") or SECRETS_DIR)
    return path if path.is_dir() else None


def load_settings[S: CommonSettings](cls: type[S], *, service: str) -> S:
    """Read ``cls`` from the environment and the secrets directory; one clear error naming every
    bad variable."""
    try:
        return cls(_secrets_dir=secrets_dir())
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_input=False, include_url=False):
            name = ".".join(str(p) for p in err["loc"]).upper()
            msg = "is required" if err["type"] == "missing" else err["msg"]
            problems.append(f"{name} {msg}")
        raise SettingsError(f"invalid {service} settings: " + "; ".join(problems)) from None
