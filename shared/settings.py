"""Settings every service reads from the environment (ARCHITECTURE §2).

Each service subclasses :class:`CommonSettings`; the resulting object is built once in ``main()``
and passed down, never read from a global.
"""

from __future__ import annotations

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
    # One deadline for the whole shutdown, below the pods' terminationGracePeriodSeconds (30 s, k8s/).
    shutdown_timeout_s: float = Field(default=25.0, gt=0)


class SettingsError(Exception):
    """A missing or invalid setting; the message names the variables, never their values."""


def load_settings[S: CommonSettings](cls: type[S], *, service: str) -> S:
    """Read ``cls`` from the environment; one clear error naming every bad variable."""
    try:
        return cls()
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_input=False, include_url=False):
            name = ".".join(str(p) for p in err["loc"]).upper()
            msg = "is required" if err["type"] == "missing" else err["msg"]
            problems.append(f"{name} {msg}")
        raise SettingsError(f"invalid {service} settings: " + "; ".join(problems)) from None
