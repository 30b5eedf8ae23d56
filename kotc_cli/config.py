"""Where the deployment is: flags, else ``make run``'s run file, else the services' environment.

``make run`` writes ``.run/stack.json`` (URLs, vhost, database, the emulators' dev credentials) and
removes it when it stops; the CLI finds it from the working directory upwards, then in the checkout
it was installed from, or at ``KOTC_RUN_FILE``.
While that stack runs, its file wins over the environment, so a shell that exports ``AMQP_URL`` for
the test suite still talks to the running stack (``--no-run-file`` turns it off). Without a run file
the CLI reads the same environment names as the services (``AMQP_URL``, ``MONGODB_URL``, ...), with
the services' defaults (:mod:`kotc_cli.settings`).

Reading (the run file, the environment) is :func:`load`; choosing what wins is :func:`layer`, pure.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from kotc_cli.errors import CliError
from kotc_cli.settings import ENV_NAMES, SERVICE_FIELDS, SERVICE_NAMES, CliSettings, build
from shared.amqp.topology import with_owned_instances

__all__ = ["KEYS", "SERVICE_ENV", "SERVICE_NAMES", "Config", "RunFile", "layer", "load"]

RUN_FILE = Path(".run") / "stack.json"
SERVICE_ENV = {name: SERVICE_FIELDS[name].upper() for name in SERVICE_NAMES}
"""Health URLs per service: ``KOTC_BROKER_API_URL``, ... (comma-separated for several replicas)."""
KEYS = tuple(env for env in ENV_NAMES if env not in SERVICE_ENV.values())
"""The other settings' environment names (what the run file holds besides ``services``)."""
MASKED = ("OTC_API_KEY", "BROKER_SECRET", "CREDENTIALS_KEY")


@dataclass(frozen=True)
class Config:
    settings: CliSettings
    source: str
    """Where the values came from (shown by ``status`` and ``doctor``)."""
    notes: list[str] = field(default_factory=list)

    def get(self, key: str) -> str | None:
        """A setting by its environment name; None when unset."""
        value = getattr(self.settings, key.lower())
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        return str(value) if value else None

    def require(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            raise CliError(f"{key} is not set (environment, --set {key}=..., or make run's run file)")
        return value

    @property
    def services(self) -> dict[str, list[str]]:
        """Health URLs of every replica of every service."""
        return self.settings.service_urls()

    @property
    def amqp_url(self) -> str:
        return self.require("AMQP_URL")

    @property
    def vhost(self) -> str:
        path = urllib.parse.urlsplit(self.amqp_url).path
        return urllib.parse.unquote(path[1:]) if len(path) > 1 else "/"

    @property
    def amqp_credentials(self) -> tuple[str, str]:
        parts = urllib.parse.urlsplit(self.amqp_url)
        return (
            urllib.parse.unquote(parts.username or "guest"),
            urllib.parse.unquote(parts.password or "guest"),
        )

    @property
    def clusters(self) -> list[str]:
        """``CLUSTER_NAME`` and broker-api's ``ALLOWED_CLUSTERS`` (if set): whose watcher queues exist."""
        names = [self.require("CLUSTER_NAME"), *(self.get("ALLOWED_CLUSTERS") or "").split(",")]
        return list(dict.fromkeys(n.strip() for n in names if n.strip()))

    @property
    def queues(self) -> tuple[str, ...]:
        """The consuming queues of docs/architecture.md §4, with each cluster's
        ``kabanero-watcher.<cluster>.instances``."""
        return tuple(with_owned_instances(self.clusters))

    @property
    def mgmt_url(self) -> str:
        return self.require("RABBITMQ_MGMT_URL").rstrip("/")

    def safe(self, key: str) -> str:
        """A value for display: credentials in URLs and secrets masked."""
        value = self.get(key) or ""
        if key in MASKED:
            return "***" if value else ""
        parts = urllib.parse.urlsplit(value)
        if parts.password:
            netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
            return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
        return value


# --- choosing (pure) ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RunFile:
    """A run file that is in use: its path and what it holds."""

    path: Path
    data: dict[str, Any]


def overrides_of(pairs: Mapping[str, str]) -> dict[str, str]:
    """``--set NAME=VALUE`` by field name; an unknown name is a usage error naming it."""
    unknown = sorted(k for k in pairs if k.upper() not in ENV_NAMES)
    if unknown:
        raise CliError(f"--set {', '.join(unknown)}: unknown setting (one of {', '.join(ENV_NAMES)})")
    return {ENV_NAMES[k.upper()]: v for k, v in pairs.items()}


def service_overrides(service_urls: Mapping[str, list[str]]) -> dict[str, list[str]]:
    """``--service NAME=URL`` (repeatable) by field name; an unknown service is a usage error."""
    for name in service_urls:
        if name not in SERVICE_NAMES:
            raise CliError(f"--service {name}: one of {', '.join(SERVICE_NAMES)}")
    return {SERVICE_FIELDS[name]: list(urls) for name, urls in service_urls.items() if urls}


def from_run_file(data: Mapping[str, Any]) -> dict[str, Any]:
    """The settings a run file holds, by field name (empty values are unset)."""
    values: dict[str, Any] = {ENV_NAMES[k]: str(data[k]) for k in KEYS if data.get(k)}
    services = data.get("services")
    if isinstance(services, dict):
        values |= {SERVICE_FIELDS[n]: services[n] for n in SERVICE_NAMES if services.get(n)}
    return values


def layer(
    run: RunFile | None, overrides: Mapping[str, str], service_urls: Mapping[str, list[str]]
) -> tuple[dict[str, Any], str]:
    """What the flags and the run file set (flags win), and where the rest comes from."""
    base = from_run_file(run.data) if run else {}
    values = base | overrides_of(overrides) | service_overrides(service_urls)
    return values, (f"run file {run.path}" if run else "environment")


# --- reading (I/O) ------------------------------------------------------------------------------

SOURCE_TREE = Path(__file__).resolve().parent.parent
"""The checkout the CLI runs from (``make venv`` installs it editable): its ``make run`` is found too."""


def find_run_file(start: Path) -> Path | None:
    """``.run/stack.json`` in ``start`` or a parent, else in the checkout the CLI was installed from."""
    for folder in (start, *start.parents, SOURCE_TREE):
        candidate = folder / RUN_FILE
        if candidate.is_file():
            return candidate
    return None


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_run_file(explicit: str | None, cwd: Path, notes: list[str]) -> RunFile | None:
    """The run file in use: the one named (it must exist), else one found whose ``make run`` lives."""
    path = Path(explicit) if explicit else find_run_file(cwd)
    if path is None:
        return None
    if explicit and not path.is_file():
        raise CliError(f"run file {path} not found")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CliError(f"run file {path} unreadable: {exc}") from None
    if not isinstance(data, dict):
        raise CliError(f"run file {path} unreadable: not a JSON object")
    if not explicit and not _alive(data.get("pid")):
        notes.append(f"ignored {path}: the make run that wrote it (pid {data.get('pid')}) is gone")
        return None
    return RunFile(path, data)


def load(
    *,
    overrides: Mapping[str, str] | None = None,
    service_urls: Mapping[str, list[str]] | None = None,
    run_file: str | None = None,
    use_run_file: bool = True,
    cwd: Path | None = None,
) -> Config:
    notes: list[str] = []
    explicit = run_file or os.environ.get("KOTC_RUN_FILE")
    run = read_run_file(explicit, cwd or Path.cwd(), notes) if use_run_file else None
    values, source = layer(run, overrides or {}, service_urls or {})
    return Config(build(values, environment=run is None), source, notes)
