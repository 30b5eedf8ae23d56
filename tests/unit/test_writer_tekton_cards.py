"""Tekton card tools (names, parameters, description, dashboard link) and the family dispatch."""

from __future__ import annotations

import json
from typing import Any, cast

import pytest

from services.otc_writer.desired import NAME_MAX, NAME_RE
from services.otc_writer.family import TEKTON, TRIGGERS, ToolStyles, family_of_scope, tekton_namespace
from services.otc_writer.reconcile import (
    Reconciler,
    decode_command,
    decode_event,
    key_of_command,
    key_of_event,
    revision_of_event,
)
from services.otc_writer.tekton_cards import (
    DESCRIPTION_MAX,
    TEKTON_PURPOSE,
    TektonCardStyle,
    card_description,
    card_tool_name,
    desired_card_tool,
)
from shared.amqp import PermanentError
from shared.amqp.consuming.errors import InvalidMessage
from shared.amqp.topology import QUEUES
from shared.events import (
    CloudEvent,
    InstanceRef,
    RoutingKeys,
    ServiceEventData,
    ServiceParameters,
    TektonCardData,
    TektonCardKey,
    TektonKind,
    TektonSnapshotData,
    ToolCommand,
    TriggerData,
    TriggerKey,
)


def _card(
    name: str = "build-pipeline",
    *,
    kind: TektonKind = "Pipeline",
    namespace: str = "kabanero",
    cluster: str = "prod",
    **fields: Any,
) -> TektonCardData:
    values: dict[str, Any] = {"api_version": "tekton.dev/v1beta1", "content_hash": "h", "revision": 1}
    values.update(fields)
    return TektonCardData(
        key=TektonCardKey(cluster=cluster, namespace=namespace, kind=kind, name=name), **values
    )


STYLE = TektonCardStyle(service_page_url="https://broker.example/tekton/{cluster}")


def test_names_valid_deterministic_distinct_and_kind_prefixed() -> None:
    cards = [
        _card("a/b"),
        _card("a-b"),  # sanitizes to the same text as above: the hash suffix keeps them apart
        _card("a-b", cluster="other"),  # same namespace and name in another cluster
        _card("a-b", kind="EventListener"),
        _card("x" * 300, namespace="n" * 63),
    ]
    names = [card_tool_name(c.key) for c in cards]
    assert len(set(names)) == len(names)
    assert all(NAME_RE.match(n) and len(n) <= NAME_MAX for n in names)
    assert names == [card_tool_name(c.key) for c in cards]
    assert names[1].startswith("tekton pipeline kabanero a-b ")
    assert names[3].startswith("tekton eventlistener kabanero a-b ")


def test_parameters_of_a_pipeline_card() -> None:
    card = _card(
        pipelines_version="v0.11.3",
        triggers_version="v0.4.0",
        tasks=["build-task", "deploy-task"],
        stack="java-microprofile",
        dashboard_url="https://dash.example/#/namespaces/kabanero/pipelineruns",
    )
    want = desired_card_tool(card, "tc-1", STYLE)
    assert (want.purpose, want.key, want.toolchain_id, want.scope) == (
        TEKTON_PURPOSE,
        card.key.id,
        "tc-1",
        "tekton:prod/kabanero",
    )
    assert want.tool_type_id == "customtool"
    p = want.parameters
    assert p["type"] == "Tekton Pipeline"
    assert p["lifecyclePhase"] == "DELIVER"
    assert p["name"] == "prod/kabanero/build-pipeline"
    assert p["dashboard_url"] == "https://dash.example/#/namespaces/kabanero/pipelineruns"
    assert p["description"] == (
        "Tekton Pipeline prod/kabanero/build-pipeline. Tekton Pipelines v0.11.3, Triggers v0.4.0. "
        "Owned by Kabanero Stack java-microprofile. Tasks: build-task, deploy-task. "
        "Read-only mirror: managed in the cluster."
    )
    extra = json.loads(p["additional-properties"])
    assert extra["tasks"] == ["build-task", "deploy-task"] and extra["kind"] == "Pipeline"


def test_parameters_of_an_eventlistener_card() -> None:
    card = _card(
        "listener-1a2b3c4d",
        kind="EventListener",
        triggers_version="v0.4.0",
        external_url="https://el-listener.apps.example",
        triggers=["kabanero-push-event (github, cel)", "kabanero-pullrequest-event (github)"],
    )
    p = desired_card_tool(card, "tc-1", STYLE).parameters
    assert p["type"] == "Tekton EventListener"
    assert p["dashboard_url"] == "https://el-listener.apps.example"
    assert p["description"] == (
        "Tekton EventListener prod/kabanero/listener-1a2b3c4d. Tekton Triggers v0.4.0. "
        "External URL: https://el-listener.apps.example. Triggers: kabanero-push-event (github, cel), "
        "kabanero-pullrequest-event (github). Read-only mirror: managed in the cluster."
    )


def test_dashboard_fallback_order() -> None:
    dash, ext = "https://dash.example/#/x", "https://el.example"
    both = _card(kind="EventListener", dashboard_url=dash, external_url=ext)
    external = _card(kind="EventListener", external_url=ext)
    neither = _card(cluster="prod east")
    assert desired_card_tool(both, "t", STYLE).parameters["dashboard_url"] == dash
    assert desired_card_tool(external, "t", STYLE).parameters["dashboard_url"] == ext
    assert desired_card_tool(neither, "t", STYLE).parameters["dashboard_url"] == (
        "https://broker.example/tekton/prod%20east"
    )


def test_description_within_limits_names_how_many_are_left_out() -> None:
    many = _card(tasks=[f"task-number-{i:03d}" for i in range(100)], stack="nodejs-express")
    text = card_description(many)
    assert len(text) <= DESCRIPTION_MAX
    assert "Owned by Kabanero Stack nodejs-express." in text
    assert text.endswith("more). Read-only mirror: managed in the cluster.")
    shown = text.split("Tasks: ")[1].split(" (+")[0].split(", ")
    left = int(text.split("(+")[1].split(" more")[0])
    assert len(shown) + left == 100
    huge = _card("x" * 600)
    assert len(card_description(huge)) == DESCRIPTION_MAX


def test_only_what_the_card_shows_changes_the_tool() -> None:
    """A new content hash or revision of the same shown content: same tool content, no OTC write."""
    a = _card(tasks=["t1"], revision=1, content_hash="one")
    b = _card(tasks=["t1"], revision=2, content_hash="two")
    c = _card(tasks=["t1", "t2"], revision=3)
    assert desired_card_tool(a, "t", STYLE).hash == desired_card_tool(b, "t", STYLE).hash
    assert desired_card_tool(a, "t", STYLE).hash != desired_card_tool(c, "t", STYLE).hash


@pytest.mark.parametrize(
    ("namespaces", "admitted"),
    [(None, {"a", "b"}), (["a"], {"a"}), ([], set())],
)
def test_tekton_services_bind_the_namespaces_they_mirror(
    namespaces: list[str] | None, admitted: set[str]
) -> None:
    service = {"scope": "tekton:prod", "namespaces": namespaces, "toolchains": ["tc"], "deleted": False}
    assert {ns for ns in ("a", "b") if TEKTON.admits(service, f"tekton:prod/{ns}")} == admitted
    assert ServiceParameters(cluster="prod", namespaces=namespaces).mirrors("a") == ("a" in admitted)
    assert TEKTON.service_scope("tekton:prod/a") == "tekton:prod"
    assert tekton_namespace("tekton:prod/a") == ("prod", "a")
    # A Kabanero Events service binds its own instance scope only.
    assert TRIGGERS.service_scope("prod/a") == "prod/a"
    assert TRIGGERS.admits({"scope": "prod/a"}, "prod/a")


def test_family_dispatch_by_scope_and_routing_key() -> None:
    assert family_of_scope("tekton:prod/a") is TEKTON
    assert family_of_scope("prod/a") is TRIGGERS
    card = _card(revision=7)
    ev = decode_event(CloudEvent.for_data(RoutingKeys.CARD_UPDATED, card, source="test"))
    assert key_of_event(ev) == "card:" + card.key.id
    assert revision_of_event(ev) == ("card", 7)
    snap = TektonSnapshotData(cluster="prod", namespace="kabanero", cards=[card], revision=3)
    sev = decode_event(CloudEvent.for_data(RoutingKeys.TEKTON_SNAPSHOT, snap, source="test"))
    assert key_of_event(sev) == "tekton:prod/kabanero"
    assert revision_of_event(sev) == ("card-snapshot", 3)
    service = ServiceEventData(
        kind="tekton",
        instance_id="svc",
        service_id="tekton",
        parameters=ServiceParameters(cluster="prod", namespaces=["kabanero"]),
        revision=1,
    )
    tev = decode_event(CloudEvent.for_data(RoutingKeys.service("tekton", "bound"), service, source="test"))
    assert key_of_event(tev) == "tekton:prod"
    assert revision_of_event(tev) is None
    # The trigger family keeps its lanes and sequences.
    trigger = TriggerData(
        key=TriggerKey(cluster="prod", namespace="k", generation="mediation", owner="o", name="n"),
        instance=InstanceRef(cluster="prod", namespace="k"),
        content_hash="h",
        revision=4,
    )
    trev = decode_event(CloudEvent.for_data(RoutingKeys.TRIGGER_CREATED, trigger, source="test"))
    assert key_of_event(trev) == "trigger:" + trigger.key.id
    assert revision_of_event(trev) == ("trigger", 4)


def test_family_desired_uses_its_own_style() -> None:
    styles = ToolStyles(tekton=TektonCardStyle(tool_type_id="othertool", lifecycle_phase="RUN"))
    want = TEKTON.desired(_card(), "tc", styles)
    assert (want.tool_type_id, want.parameters["lifecyclePhase"]) == ("othertool", "RUN")
    assert want.purpose == TEKTON.purpose == "tekton"


async def test_a_service_event_of_another_kind_is_refused_naming_the_field() -> None:
    """``service.tekton.*`` carrying a Kabanero Events service: rejected before anything is stored."""
    reconciler = Reconciler(cast(Any, None), cast(Any, None), cast(Any, None), ToolStyles(), cast(Any, None))
    wrong = ServiceEventData(
        kind="kabanero-events",
        instance_id="svc",
        service_id="kabanero-events",
        parameters=ServiceParameters(cluster="prod", namespace="kabanero"),
        revision=1,
    )
    event = decode_event(CloudEvent.for_data(RoutingKeys.service("tekton", "bound"), wrong, source="test"))
    with pytest.raises(PermanentError, match=r"kind: 'kabanero-events' in a service\.tekton\.bound event"):
        await reconciler.handle_event(event)


def test_the_decoder_reads_every_event_the_writer_binds() -> None:
    """Built from the families: every routing key of otc-writer.events has its model, and commands
    are one model."""
    for pattern in QUEUES["otc-writer.events"]:
        rk = pattern.replace("*", "provisioned" if pattern.startswith("service.") else "created")
        assert decode_event.model_for(rk) is not None, rk
    assert decode_event.model_for("kabanero.trigger.deleted") is TriggerData
    assert decode_event.model_for("tekton.card.updated") is TektonCardData
    assert decode_event.model_for("service.tekton.bound") is ServiceEventData
    assert decode_event.model_for("kabanero.instance.changed") is None


def test_invalid_item_data_is_an_invalid_message_naming_the_model_and_field() -> None:
    bad = CloudEvent(
        id="e1",
        type="io.kabanero.otc.kabanero.trigger.updated",
        source="test",
        data={"key": {"cluster": "prod"}, "revision": -1},
    )
    with pytest.raises(InvalidMessage, match=r"^invalid TriggerData: data\.key\.namespace"):
        decode_event(bad)


async def test_the_deleted_routing_key_forces_the_tombstone() -> None:
    seen: list[Any] = []

    class Capture(Reconciler):
        async def _on_item(self, family: Any, item: Any, cause: str) -> None:
            seen.append((family, item.deleted, cause))

    reconciler = Capture(cast(Any, None), cast(Any, None), cast(Any, None), ToolStyles(), cast(Any, None))
    card = _card(revision=3)
    assert not card.deleted
    event = CloudEvent.for_data(RoutingKeys.CARD_DELETED, card, source="test", id="e-del")
    await reconciler.handle_event(decode_event(event))
    assert seen == [(TEKTON, True, "e-del")]


def test_commands_are_keyed_by_tool() -> None:
    cmd = ToolCommand(
        purpose="github",
        key="repo",
        toolchain_id="tc",
        tool_type_id="githubconsolidated",
        name="n",
        revision=2,
    )
    message = decode_command(CloudEvent.for_data(RoutingKeys.TOOL_APPLY, cmd, source="test"))
    assert key_of_command(message) == "github|tc|repo"
