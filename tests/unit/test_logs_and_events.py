"""JSON logs carry context and mask secrets; CloudEvents round-trip with routing keys."""

from __future__ import annotations

import json
import logging

import pytest

from shared.events import CloudEvent, RoutingKeys, ToolCommand, TriggerKey
from shared.logs import JsonFormatter


def _format(**extra: object) -> dict[str, object]:
    record = logging.LogRecord("svc.mod", logging.INFO, __file__, 1, "hello %s", ("world",), None)
    for k, v in extra.items():
        setattr(record, k, v)
    return dict(json.loads(JsonFormatter().format(record)))


def test_json_log_has_message_and_context() -> None:
    out = _format(sid="abc", toolchain_id="t1")
    assert out["message"] == "hello world"
    assert out["logger"] == "svc.mod"
    assert out["sid"] == "abc"
    assert out["toolchain_id"] == "t1"


@pytest.mark.parametrize("key", ["service_credentials", "api_key", "broker_secret", "access_token"])
def test_json_log_masks_secret_looking_fields(key: str) -> None:
    assert _format(**{key: "s3cr3t"})[key] == "***"


def test_cloudevent_routing_key_and_roundtrip() -> None:
    cmd = ToolCommand(
        purpose="github",
        key="github:tc:abc",
        toolchain_id="tc",
        tool_type_id="githubconsolidated",
        name="github acme-app",
        revision=3,
    )
    event = CloudEvent.for_data(RoutingKeys.TOOL_APPLY, cmd, source="github-linker", subject=cmd.key)
    assert event.type == "io.kabanero.otc.otc.tool.apply"
    assert event.routing_key == "otc.tool.apply"
    back = CloudEvent.model_validate_json(event.model_dump_json())
    assert ToolCommand.model_validate(back.data) == cmd


def test_trigger_key_id_is_stable() -> None:
    key = TriggerKey(cluster="c", namespace="ns", generation="mediation", owner="m", name="x")
    assert key.id == "c/ns/mediation/m/x"
    assert RoutingKeys.service("kabanero-events", "bound") == "service.kabanero-events.bound"
