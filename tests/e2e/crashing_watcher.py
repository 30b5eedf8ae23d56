"""kabanero-watcher with a fault the test injects: SIGKILL itself right after the Kubernetes API
answered the create of a Kabanero CR, before the watcher records the command's outcome.

``python -m tests.e2e.crashing_watcher``, with the service's usual environment. The fault lives here,
in the test, not in product code: it wraps ``kubernetes_asyncio``'s ``ApiClient.call_api`` (what every
request of the watcher goes through) for this process only.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Coroutine
from typing import Any

from kubernetes_asyncio import client

from services.kabanero_watcher.app import main

log = logging.getLogger(__name__)
_call_api = client.ApiClient.call_api


def _creates_a_kabanero(method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    path_params = kwargs.get("path_params", args[0] if args else None) or {}
    return method == "POST" and path_params.get("plural") == "kabaneros"


async def _then_die(request: Coroutine[Any, Any, Any]) -> Any:
    result = await request
    log.critical("test fault: killing the process after the Kabanero CR was created")
    os.kill(os.getpid(), signal.SIGKILL)
    return result  # never reached


def call_api(self: client.ApiClient, resource_path: str, method: str, *args: Any, **kwargs: Any) -> Any:
    request = _call_api(self, resource_path, method, *args, **kwargs)
    return _then_die(request) if _creates_a_kabanero(method, args, kwargs) else request


if __name__ == "__main__":
    client.ApiClient.call_api = call_api  # type: ignore[method-assign]
    main()
