"""The CLI's settings: the services' own environment names, with the services' own defaults.

Every default is read from the settings class of the service that owns it (the health URLs from each
service's ``HTTP_PORT``), so the CLI cannot drift from what a service does when a variable is unset.
:class:`CliSettings` reads the environment (and the secrets directory, as the services do);
:class:`RunFileSettings` reads only what it is given: while ``make run``'s stack runs, its run file
replaces the environment instead of being merged with it.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from kotc_cli.errors import CliError
from services.broker_api.settings import Settings as BrokerSettings
from services.github_linker.settings import Settings as LinkerSettings
from services.kabanero_watcher.settings import Settings as WatcherSettings
from services.otc_writer.settings import Settings as WriterSettings
from shared.settings import CommonSettings, secrets_dir, split_comma_list

SERVICE_SETTINGS: dict[str, type[CommonSettings]] = {
    "broker-api": BrokerSettings,
    "kabanero-watcher": WatcherSettings,
    "otc-writer": WriterSettings,
    "github-linker": LinkerSettings,
}
SERVICE_NAMES = tuple(SERVICE_SETTINGS)
SERVICE_FIELDS = {name: "kotc_" + name.replace("-", "_") + "_url" for name in SERVICE_NAMES}
"""Field per service: ``kotc_broker_api_url`` (environment ``KOTC_BROKER_API_URL``), ..."""


def default_of(cls: type[BaseSettings], name: str) -> Any:
    """A service setting's default, as the service applies it when the variable is unset."""
    return cls.model_fields[name].get_default(call_default_factory=True)


def local_url(service: str) -> str:
    """Where a service listens when run as a process on this host with its default ``HTTP_PORT``."""
    return f"http://127.0.0.1:{default_of(SERVICE_SETTINGS[service], 'http_port')}"


def _urls(service: str) -> Any:
    return Field(default=(local_url(service),), description=f"health URL(s) of {service} (comma-separated)")


ServiceUrls = Annotated[tuple[str, ...], NoDecode]
SECRETS = ("amqp_url", "mongodb_url", "otc_api_key", "broker_secret", "credentials_key")


class CliSettings(BaseSettings):
    """Where the deployment is; optional values are None when unset (a command that needs one says so)."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", frozen=True, env_ignore_empty=True)

    amqp_url: SecretStr = default_of(CommonSettings, "amqp_url")
    mongodb_url: SecretStr = default_of(CommonSettings, "mongodb_url")
    rabbitmq_mgmt_url: str = "http://127.0.0.1:15672"
    """RabbitMQ's management API (no service reads it; RabbitMQ's own default port)."""
    kube_api_url: str | None = default_of(WatcherSettings, "kube_api_url")
    otc_api_url: str = default_of(WriterSettings, "otc_api_url")
    otc_iam_url: str = default_of(WriterSettings, "otc_iam_url")
    otc_api_key: SecretStr | None = None
    broker_id: str | None = None
    broker_secret: SecretStr | None = None
    credentials_key: SecretStr | None = None
    cluster_name: str = Field(default=default_of(WatcherSettings, "cluster_name"), min_length=1)
    allowed_clusters: str | None = None
    """broker-api's clusters; unset here (not broker-api's default) so only ``CLUSTER_NAME`` counts."""
    lease_namespace: str = Field(default=default_of(WatcherSettings, "lease_namespace"), min_length=1)
    lease_name: str = Field(default=default_of(WatcherSettings, "lease_name"), min_length=1)
    watch_families: Annotated[tuple[Literal["kabanero", "tekton"], ...], NoDecode] = default_of(
        WatcherSettings, "watch_families"
    )
    """The watcher's families: ``doctor`` checks the RBAC of each (comma-separated)."""
    watch_namespaces: Annotated[tuple[str, ...], NoDecode] = default_of(WatcherSettings, "watch_namespaces")
    tekton_install_namespaces: Annotated[tuple[str, ...], NoDecode] = default_of(
        WatcherSettings, "tekton_install_namespaces"
    )
    kotc_broker_api_url: ServiceUrls = _urls("broker-api")
    kotc_kabanero_watcher_url: ServiceUrls = _urls("kabanero-watcher")
    kotc_otc_writer_url: ServiceUrls = _urls("otc-writer")
    kotc_github_linker_url: ServiceUrls = _urls("github-linker")

    SOURCES: ClassVar[tuple[str, ...]] = ("init", "env", "secrets")

    @field_validator(
        "kube_api_url",
        "otc_api_key",
        "broker_id",
        "broker_secret",
        "credentials_key",
        "allowed_clusters",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("watch_families", "watch_namespaces", "tekton_install_namespaces", mode="before")
    @classmethod
    def _names(cls, value: object) -> object:
        return split_comma_list(value)

    @field_validator(*SERVICE_FIELDS.values(), mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, list | tuple):
            return tuple(str(u).strip().rstrip("/") for u in value if str(u).strip())
        return value

    @field_validator(*SERVICE_FIELDS.values())
    @classmethod
    def _http(cls, urls: tuple[str, ...]) -> tuple[str, ...]:
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError("each URL must be http(s)://host[:port]")
        if not urls:
            raise ValueError("needs at least one URL")
        return urls

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        named = {"init": init_settings, "env": env_settings, "secrets": file_secret_settings}
        return tuple(named[s] for s in cls.SOURCES)

    def service_urls(self) -> dict[str, list[str]]:
        return {name: list(getattr(self, SERVICE_FIELDS[name])) for name in SERVICE_NAMES}


class RunFileSettings(CliSettings):
    """The same settings from ``make run``'s run file (and the flags) only, never the environment."""

    SOURCES: ClassVar[tuple[str, ...]] = ("init",)


FIELDS = tuple(CliSettings.model_fields)
ENV_NAMES = {name.upper(): name for name in FIELDS}
"""Environment name -> field: ``--set NAME=VALUE`` and the run file use these names."""


def build(values: dict[str, Any], *, environment: bool) -> CliSettings:
    """Settings from ``values`` (by field name; they win) over the environment, or over nothing.

    A bad value is a :class:`CliError` naming each variable, never echoing its value.
    """
    try:
        if environment:
            return CliSettings(_secrets_dir=secrets_dir(), **values)
        return RunFileSettings(**values)
    except ValidationError as exc:
        raise CliError(describe(exc)) from None


def describe(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors(include_input=False, include_url=False):
        name = ".".join(str(p) for p in err["loc"][:1]).upper()
        problems.append(f"{name} {'is required' if err['type'] == 'missing' else err['msg']}")
    return "invalid settings: " + "; ".join(problems)
