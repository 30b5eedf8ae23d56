"""Cards derived from Tekton's and Kabanero's own published YAML (tests/fixtures/tekton/README.md
names each source): what a toolchain user sees for every release Kabanero shipped and for today's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from services.kabanero_watcher.tekton_derive import (
    Installation,
    eventlistener_card,
    owner_stack,
    pipeline_card,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tekton"
INST = Installation(found=True, reason="x", pipelines_version="v0.11.3", triggers_version="v0.4.0")


def objects(name: str, kind: str) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all((FIXTURES / name).read_text()) if isinstance(d, dict)]
    out = [d for d in docs if d.get("kind") == kind]
    for d in out:
        d["metadata"].setdefault("namespace", "kabanero")  # `kubectl apply -n kabanero`, as the operator
    return out


def activated(obj: dict[str, Any], stack: str) -> dict[str, Any]:
    """As the Kabanero operator applies it: an ownerReference to the Stack that activated it."""
    obj["metadata"]["ownerReferences"] = [
        {"apiVersion": "kabanero.io/v1alpha2", "kind": "Stack", "name": stack}
    ]
    return obj


@pytest.mark.parametrize(
    ("fixture", "api", "tasks"),
    [
        (
            "kabanero-0.6.0-build-deploy-pl.yaml",
            "tekton.dev/v1alpha1",
            ["validate-stack-task", "build-push-task", "image-scan-task", "deploy-task"],
        ),
        (
            "kabanero-0.9.1-build-deploy-pl.yaml",
            "tekton.dev/v1beta1",
            ["build-push-task", "image-scan-task", "deploy-task"],
        ),
    ],
)
def test_kabanero_pipelines_show_their_tasks_and_their_stack(
    fixture: str, api: str, tasks: list[str]
) -> None:
    (pipeline,) = objects(fixture, "Pipeline")
    card = pipeline_card("c1", activated(pipeline, "java-microprofile"), api, INST)
    assert card.key.name == "java-microprofile-build-deploy-pl"  # StackId rendered, as activated
    assert card.tasks == tasks
    assert card.stack == "java-microprofile"
    assert card.api_version == api


def test_the_kabanero_0_9_events_listener_shows_its_cel_triggers() -> None:
    (listener,) = objects("kabanero-0.9.0-events-event-listener.yaml", "EventListener")
    card = eventlistener_card(
        "c1", listener, "triggers.tekton.dev/v1alpha1", INST, {"el-listener-b4ef64ab": "https://el.example"}
    )
    assert card.key.name == "listener-b4ef64ab"
    assert card.triggers == [
        "kabanero-push-event (interceptors: cel)",
        "kabanero-pullrequest-event (interceptors: cel)",
        "kabanero-tag-event (interceptors: cel)",
        "kabanero-monitor-task-event (interceptors: cel)",
    ]
    assert card.external_url == "https://el.example"


def test_current_releases_read_as_users_run_them() -> None:
    (pipeline,) = objects("pipeline-v1.15.0-task-timeout-override.yaml", "Pipeline")
    card = pipeline_card("c1", pipeline, "tekton.dev/v1", INST)
    assert card.tasks == ["long-running-task", "verify-timeout"] and card.stack is None
    assert owner_stack(pipeline) is None
    (listener,) = objects("triggers-v0.37.0-github-owners.yaml", "EventListener")
    el = eventlistener_card("c1", listener, "triggers.tekton.dev/v1beta1", INST, {})
    assert el.triggers == ["github-owners-listener (interceptors: github)"]
    assert el.external_url is None


def test_the_triggers_0_2_example_reads_in_tekton_dev() -> None:
    (listener,) = objects("triggers-v0.2.1-github-eventlistener-interceptor.yaml", "EventListener")
    card = eventlistener_card("c1", listener, "tekton.dev/v1alpha1", INST, {})
    assert card.triggers == ["foo-trig (interceptors: github)"] and card.api_version == "tekton.dev/v1alpha1"
