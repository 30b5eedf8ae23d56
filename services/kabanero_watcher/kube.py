"""The Kubernetes API client: KUBE_API_URL (emulator), in-cluster config, or a kubeconfig file."""

from __future__ import annotations

import logging
from typing import Self

from kubernetes_asyncio import client, config

from services.kabanero_watcher.settings import Settings

log = logging.getLogger(__name__)


async def make_api_client(settings: Settings) -> client.ApiClient:
    cfg = client.Configuration()
    if settings.kube_api_url:
        cfg.host = settings.kube_api_url.rstrip("/")
        source = "KUBE_API_URL"
    elif settings.kubernetes_service_host:
        config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        source = "in-cluster"
    else:
        await config.load_kube_config(
            config_file=settings.kubeconfig, context=settings.kube_context, client_configuration=cfg
        )
        source = f"kubeconfig {settings.kubeconfig or '~/.kube/config'}"
    log.info("Kubernetes API at %s (%s)", cfg.host, source, extra={"cluster": settings.cluster_name})
    return client.ApiClient(configuration=cfg)


class KubeClient:
    """The API client as a part of the runtime: made on entry (unless one was given: tests), closed
    on exit if it is ours."""

    def __init__(self, settings: Settings, given: client.ApiClient | None = None) -> None:
        self._settings = settings
        self._given = given
        self._client: client.ApiClient | None = given

    @property
    def api_client(self) -> client.ApiClient:
        if self._client is None:
            raise RuntimeError("Kubernetes client not opened")
        return self._client

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api_client)

    async def __aenter__(self) -> Self:
        if self._client is None:
            self._client = await make_api_client(self._settings)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._given is None and self._client is not None:
            await self._client.close()
            self._client = None
