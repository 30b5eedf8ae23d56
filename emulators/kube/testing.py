"""Pytest-friendly entry points for the Kubernetes API emulator.

async with KubeEmulator.running(history_window=50, bookmark_interval=0.2) as kube:
    kube.store.create({"apiVersion": "kabanero.io/v1alpha2", "kind": "Kabanero",
                       "metadata": {"name": "kabanero", "namespace": "kabanero"}, "spec": {}})
    config = client_configuration(kube.url)          # for kubernetes_asyncio
    kube.kubeconfig(tmp_path / "kubeconfig")          # for kubectl / load_kube_config
    kube.inject("stall", seconds=5)
"""

from __future__ import annotations

from typing import Any

from .faults import Faults
from .selectors import Selector
from .server import KubeEmulator
from .store import Store

__all__ = ["Faults", "KubeEmulator", "Selector", "Store", "client_configuration"]


def client_configuration(url: str) -> Any:
    """A `kubernetes_asyncio.client.Configuration` whose host is `url` (imported lazily: the emulator itself
    does not need the client library)."""
    from kubernetes_asyncio.client import Configuration

    config = Configuration()
    config.host = url
    return config
