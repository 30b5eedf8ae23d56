"""Where the deployment is: flags, else ``make run``'s run file, else the services' environment.

``make run`` writes ``.run/stack.json`` (URLs, vhost, database, the emulators' dev credentials) and
removes it when it stops; the CLI finds it from the working directory upwards, then in the checkout
it was installed from, or at ``KOTC_RUN_FILE``.
While that stack runs, its file wins over the environment, so a shell that exports ``AMQP_URL`` for
the test suite still talks to the running stack (``--no-run-file`` turns it off). Without a run file
the CLI reads the same environment names as the services (``AMQP_URL``, ``MONGODB_URL``, ...).
"""

from __future__ import annotations

import json
import os
import sys
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kotc_cli.errors import CliError
from shared.amqp.topology import with_owned_instances

RUN_FILE = Path(".run") / "stack.json"
SERVICE_NAMES = ("broker-api", "kabanero-watcher", "otc-writer", "github-linker")
SERVICE_ENV = {name: "KOTC_" + name.upper().replace("-", "_") + "_URL" for name in SERVICE_NAMES}
"""Health URLs per service: ``KOTC_BROKER_API_URL``, ... (comma-separated for several replicas)."""

DEFAULTS: dict[str, str] = {
    "AMQP_URL": "amqp://guest:guest@127.0.0.1:5672/",
    "MONGODB_URL": "mongodb://127.0.0.1:27017/kabanero_otc",
    "RABBITMQ_MGMT_URL": "http://127.0.0.1:15672",
    "OTC_API_URL": "https://api.us-south.devops.cloud.ibm.com/toolchain/v2",
    "OTC_IAM_URL": "https://iam.cloud.ibm.com",
    "CLUSTER_NAME": "default",
    "LEASE_NAMESPACE": "kabanero",
    "LEASE_NAME": "kabanero-watcher",
}
KEYS = (
    *DEFAULTS,
    "ALLOWED_CLUSTERS",
    "KUBE_API_URL",
    "OTC_API_KEY",
    "BROKER_ID",
    "BROKER_SECRET",
    "CREDENTIALS_KEY",
)
SERVICE_DEFAULTS = {
    "broker-api": "http://127.0.0.1:8080",
    "kabanero-watcher": "http://127.0.0.1:8081",
    "otc-writer": "http://127.0.0.1:8082",
    "github-linker": "http://127.0.0.1:8083",
}


@dataclass(frozen=True)
class Config:
    values: dict[str, str]
    services: dict[str, list[str]]
    source: str
    """Where the values came from (shown by ``doctor``)."""
    notes: list[str] = field(default_factory=list)

    def get(self, key: str) -> str | None:
        return self.values.get(key) or None

    def require(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            raise CliError(f"{key} is not set (environment, --set {key}=..., or make run's run file)")
        return value

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
        if key in ("OTC_API_KEY", "BROKER_SECRET", "CREDENTIALS_KEY"):
            return "***" if value else ""
        parts = urllib.parse.urlsplit(value)
        if parts.password:
            netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
            return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
        return value


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


def load(
    *,
    overrides: Mapping[str, str] | None = None,
    service_urls: Mapping[str, list[str]] | None = None,
    run_file: str | None = None,
    use_run_file: bool = True,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Config:
    env = os.environ if environ is None else environ
    notes: list[str] = []
    run: dict[str, Any] = {}
    path: Path | None = None
    if use_run_file:
        explicit = run_file or env.get("KOTC_RUN_FILE")
        path = Path(explicit) if explicit else find_run_file(cwd or Path.cwd())
        if explicit and path is not None and not path.is_file():
            raise CliError(f"run file {path} not found")
        if path is not None:
            try:
                run = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise CliError(f"run file {path} unreadable: {exc}") from None
            if not explicit and not _alive(run.get("pid")):
                notes.append(f"ignored {path}: the make run that wrote it (pid {run.get('pid')}) is gone")
                run, path = {}, None
    values = {k: v for k, v in DEFAULTS.items()}
    source = "environment"
    if run:
        values |= {k: str(run[k]) for k in KEYS if run.get(k)}
        source = f"run file {path}"
    else:
        values |= {k: env[k] for k in KEYS if env.get(k)}
    values |= dict(overrides or {})
    services: dict[str, list[str]] = {}
    for name in SERVICE_NAMES:
        from_run = run.get("services", {}).get(name) if run else None
        from_env = [u.strip() for u in env.get(SERVICE_ENV[name], "").split(",") if u.strip()]
        services[name] = (
            list((service_urls or {}).get(name) or [])
            or list(from_run or [])
            or (from_env if not run else [])
            or [SERVICE_DEFAULTS[name]]
        )
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return Config(values=values, services=services, source=source, notes=notes)
