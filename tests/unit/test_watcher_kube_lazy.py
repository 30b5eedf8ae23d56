"""The watcher imports kubernetes_asyncio without its generated package indexes (memory, issue 12)."""

from __future__ import annotations

import json
import subprocess
import sys

_PROBE = """
import json, sys
import services.kabanero_watcher.app
from kubernetes_asyncio import client, watch
loaded = [m for m in sys.modules if m.startswith("kubernetes_asyncio.client.models.")]
api = client.CoreV1Api
model = client.models.V1Namespace
print(json.dumps({
    "models_before_use": len(loaded),
    "api": f"{api.__module__}.{api.__name__}",
    "model": f"{model.__module__}.{model.__name__}",
    "watch": watch.Watch.__module__,
    "modules": len([m for m in sys.modules if m.startswith("kubernetes_asyncio")]),
}))
"""


def test_generated_models_load_only_when_named() -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE], check=True, capture_output=True, text=True)
    probe = json.loads(out.stdout)
    # The full package imports ~1,100 of its modules; the watcher needs a few dozen.
    assert probe["models_before_use"] < 20
    assert probe["modules"] < 100
    assert probe["api"] == "kubernetes_asyncio.client.api.core_v1_api.CoreV1Api"
    assert probe["model"] == "kubernetes_asyncio.client.models.v1_namespace.V1Namespace"
    assert probe["watch"] == "kubernetes_asyncio.watch.watch"


def test_an_unknown_name_is_an_attribute_error() -> None:
    probe = "import services.kabanero_watcher\nfrom kubernetes_asyncio import client\nclient.NoSuchApi\n"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.returncode == 1 and "AttributeError" in out.stderr and "NoSuchApi" in out.stderr
