"""`KubeEmulator`: the store, the faults and the HTTP app bound to a socket, started and stopped in-process."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Self

import yaml
from aiohttp import web

from . import crd
from .faults import Faults
from .http import WatchSettings, build_app, close_streams
from .resources import BUILTIN_RESOURCES, DEFAULT_RESOURCES, Registry
from .seeding import seed as seed_files
from .store import Store


class KubeEmulator:
    """An emulated Kubernetes API server on `url`.

    `store` is the object store (direct, synchronous helpers: `create`, `apply`, `update`, `patch`,
    `patch_status`, `delete`, `remove_finalizers`, `get`, `list_objects`); `faults` injects faults (also
    reachable as `inject(name, **params)` and over HTTP under `/_emulator/`).

    `crds`: bundles (`crd.BUNDLES`: "tekton-v0.10.1", "tekton-v0.11.3", "tekton-current",
    "openshift-pipelines-operator", "tekton-operator") or YAML files of CRDs installed at start (and again
    after a reset); `install(bundle)` / `uninstall(bundle)` later. `kabanero=False`: a cluster without the
    Kabanero CRDs (kabaneros, stacks, eventmediators, eventconnections are not served).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        history_window: int = 1000,
        bookmark_interval: float = 1.0,
        max_watch_seconds: float = 1800.0,
        auto_namespaces: bool = False,
        seed: Iterable[str | Path] = (),
        crds: Iterable[str] = (),
        kabanero: bool = True,
    ) -> None:
        self.host = host
        self.port = port
        self.store = Store(
            Registry(DEFAULT_RESOURCES if kabanero else BUILTIN_RESOURCES),
            history_window=history_window,
            auto_namespaces=auto_namespaces,
            crds=[definition for name in crds for definition in crd.bundle(name)],
        )
        self.faults = Faults(self.store)
        self.settings = WatchSettings(
            bookmark_interval=bookmark_interval, max_watch_seconds=max_watch_seconds
        )
        self.app = build_app(self.store, self.faults, self.settings)
        self._seed = tuple(seed)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("already started")
        seed_files(self.store, self._seed)
        # Like every real cluster: its uid is the cluster identity watchers record per CLUSTER_NAME.
        if not any(o["metadata"]["name"] == "kube-system" for o in self.store.list_objects("namespaces")):
            self.store.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-system"}})
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        self.port = int(sock.getsockname()[1])
        runner = web.AppRunner(self.app, handle_signals=False, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        self._runner = runner

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        close_streams(self.store)
        await runner.cleanup()

    @classmethod
    @asynccontextmanager
    async def running(
        cls,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        history_window: int = 1000,
        bookmark_interval: float = 1.0,
        max_watch_seconds: float = 1800.0,
        auto_namespaces: bool = False,
        seed: Iterable[str | Path] = (),
        crds: Iterable[str] = (),
        kabanero: bool = True,
    ) -> AsyncIterator[Self]:
        """Start an emulator for the duration of the block (port 0: a free port, see `url`)."""
        emulator = cls(
            host=host,
            port=port,
            history_window=history_window,
            bookmark_interval=bookmark_interval,
            max_watch_seconds=max_watch_seconds,
            auto_namespaces=auto_namespaces,
            seed=seed,
            crds=crds,
            kabanero=kabanero,
        )
        await emulator.start()
        try:
            yield emulator
        finally:
            await emulator.stop()

    def inject(self, fault: str, **params: Any) -> dict[str, Any]:
        """Same as `POST /_emulator/<fault>` with `params` as JSON body (see the package docstring)."""
        return self.faults.inject(fault, params)

    def install(self, bundle: str) -> list[str]:
        """Same as `POST /_emulator/install {"bundle": ...}`: create the bundle's CRDs. Returns their names."""
        return self.faults.install(bundle)

    def uninstall(self, bundle: str) -> list[str]:
        """Same as `POST /_emulator/uninstall {"bundle": ...}`: delete the bundle's CRDs and their objects."""
        return self.faults.uninstall(bundle)

    def state(self) -> dict[str, Any]:
        """Same as `GET /_emulator/state`."""
        return self.faults.state()

    def kubeconfig(
        self, path: str | Path, *, namespace: str = "default", context: str = "kube-emulator"
    ) -> Path:
        """Write a kubeconfig pointing at this emulator (plain HTTP, no credentials) and return its path."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": context, "cluster": {"server": self.url}}],
            "users": [{"name": context, "user": {}}],
            "contexts": [
                {"name": context, "context": {"cluster": context, "user": context, "namespace": namespace}}
            ],
            "current-context": context,
            "preferences": {},
        }
        target.write_text(yaml.safe_dump(config, sort_keys=False))
        return target
