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

    amqp_url: SecretStr = Field(
        default=SecretStr("amqp://guest:guest@127.0.0.1:5672/"),
        description="RabbitMQ (secret: holds the password; `amqps://` for TLS)",
    )
    mongodb_url: SecretStr = Field(
        default=SecretStr("mongodb://127.0.0.1:27017/kabanero_otc"),
        description="MongoDB; the database is `kabanero_otc` (secret: holds the password)",
    )
    http_host: str = Field(default="0.0.0.0", description="address of the HTTP listener")
    http_port: int = Field(
        default=8080,
        ge=0,
        le=65535,
        description="/healthz /readyz /metrics (broker-api: also the API); 0 = any free port. Each service "
        "has its own default so that one host runs all four as processes; the image sets 8080 for all four",
    )
    log_format: Literal["json", "text", "auto"] = Field(
        default="auto",
        description="`json`, `text`, or `auto` (text on a TTY, else JSON); the image sets `json`",
    )
    log_level: str = Field(
        default="INFO", description="level of the root logger (`DEBUG`, `INFO`, `WARNING`, ...)"
    )
    connect_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="bound on reaching RabbitMQ and MongoDB at start (then the service exits non-zero): "
        "a service that cannot reach its dependencies fails loudly",
    )
    publish_timeout_s: float = Field(default=10.0, gt=0, description="bound on a publisher confirm")
    consumer_hold_limit_s: float = Field(
        default=900.0,
        gt=0,
        description="longest a consumed message waits unacked (an outage being held); then it is put back "
        "at the tail of its queue as a copy (no attempt spent). Keep it below RabbitMQ's "
        '`consumer_timeout` (30 min by default), which closes the channel (docs/design.md, "Faults")',
    )
    gc_freeze_interval_s: float = Field(
        default=10.0,
        ge=0,
        description="every so often what has survived is moved out of the cyclic GC's reach "
        "(`gc.freeze()`, `shared/heap.py`), so full collections stay short on a large heap; 0 turns it off",
    )
    gc_full_interval_s: float = Field(
        default=3600.0,
        ge=0,
        description="one full collection over the frozen objects too (reclaims garbage in reference cycles "
        "among them): one long pause per interval; 0 never",
    )
    shutdown_timeout_s: float = Field(
        default=25.0,
        gt=0,
        description="one deadline for the whole shutdown after SIGTERM, below the pods' "
        "`terminationGracePeriodSeconds` (30-40 in k8s/); otc-writer's two consumers wait together for 40 % "
        "of it for their running handlers, then what still runs goes back to the queue unacked",
    )


class SettingsError(Exception):
    """A missing or invalid setting; the message names the variables, never their values."""


SECRETS_DIR = "/run/secrets"
"""Where Kubernetes Secret volumes and compose secrets are usually mounted (``SECRETS_DIR`` overrides)."""


def comma_list(text: str) -> tuple[str, ...]:
    """A comma-separated setting (``WATCH_NAMESPACES``, ``ALLOWED_CLUSTERS``, ``BROKERS``...) as its
    items: whitespace around them and empty items dropped."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def split_comma_list(value: object) -> object:
    """A ``mode="before"`` validator body for a tuple setting given as one comma-separated string."""
    return comma_list(value) if isinstance(value, str) else value


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
