"""The Kubernetes API client: KUBE_API_URL (emulator), in-cluster config, or a kubeconfig file."""

from __future__ import annotations

import logging

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
