"""The Kubernetes API client: KUBE_API_URL (emulator), in-cluster config, or a kubeconfig file.

The one module of the watcher that imports ``kubernetes_asyncio`` (an import-linter contract holds
it to that): the others take from here the API classes they call (custom objects, core config maps
and namespaces, discovery, the watch stream) and the library's error, so a library upgrade or a
change of client touches this module only.
"""

from __future__ import annotations

import logging
from typing import Self

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client import ApiClient, ApisApi, CoreV1Api, CustomObjectsApi
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.watch import Watch as _LibraryWatch

from services.kabanero_watcher.settings import Settings

__all__ = [
    "ApiClient",
    "ApiException",
    "ApisApi",
    "CoreV1Api",
    "CustomObjectsApi",
    "KubeClient",
    "Watch",
    "delete_if_uid",
    "make_api_client",
    "namespace_named",
]

log = logging.getLogger(__name__)


def namespace_named(name: str) -> client.V1Namespace:
    """The body of a namespace to create."""
    return client.V1Namespace(metadata=client.V1ObjectMeta(name=name))


def delete_if_uid(uid: str | None) -> client.V1DeleteOptions:
    """Delete options that make the API server refuse (409) when the object is no longer ``uid``."""
    return client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=uid))


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


class Watch(_LibraryWatch):
    """The library's watch stream, deserialising with the given ``ApiClient`` instead of a new one.

    The library's ``Watch()`` builds an ``ApiClient`` per instance, whose REST client makes an SSL
    context that loads the system CA store: about 70 ms of CPU on the event loop for every watch
    connect (3-6 per term start and per reconnect of every stream, all at once; issue 21).
    """

    def __init__(self, api_client: ApiClient | None = None) -> None:
        if api_client is None:
            super().__init__()
        else:  # what the library's __init__ sets, without its client
            self._raw_return_type = None
            self._stop = False
            self._api_client = api_client
            self.resource_version = None
            self.resp = None
        self._owns_client = api_client is None

    async def close(self) -> None:
        """Release the response; the client only when it is this watch's own."""
        if self._owns_client:
            await super().close()
        elif self.resp is not None:
            self.resp.release()
            self.resp = None


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
