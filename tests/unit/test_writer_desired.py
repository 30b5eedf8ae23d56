"""Trigger tool names and content: deterministic, valid for OTC, unique per trigger."""

from __future__ import annotations

from services.otc_writer.applier import merge_patch_for
from services.otc_writer.desired import (
    NAME_MAX,
    NAME_RE,
    TriggerToolStyle,
    desired_trigger_tool,
    trigger_tool_name,
)
from shared.events import InstanceRef, TriggerData, TriggerKey


def _trigger(
    namespace: str = "kabanero", owner: str = "webhook", name: str = "m1", cluster: str = "default"
) -> TriggerData:
    return TriggerData(
        key=TriggerKey(cluster=cluster, namespace=namespace, generation="mediation", owner=owner, name=name),
        instance=InstanceRef(cluster=cluster, namespace=namespace),
        content_hash="h",
        revision=1,
    )


def test_names_valid_deterministic_and_distinct() -> None:
    odd = [
        _trigger(owner="a/b", name="x:y"),
        _trigger(owner="a-b", name="x-y"),  # sanitizes to the same text as above
        _trigger(owner="o" * 200, name="n" * 200),
        _trigger(cluster="other"),  # same namespace/owner/name, other cluster
        _trigger(),
        _trigger(name="ünïcødé"),
    ]
    names = [trigger_tool_name(t.key) for t in odd]
    assert len(set(names)) == len(names)
    for n in names:
        assert len(n) <= NAME_MAX and NAME_RE.match(n)
    assert names == [trigger_tool_name(t.key) for t in odd]


def test_customtool_parameters_pass_otc_validation() -> None:
    tool = desired_trigger_tool(_trigger(owner="my mediator"), "tc", TriggerToolStyle())
    assert tool.tool_type_id == "customtool"
    # Required customtool parameters (docs/reference/otc-api.md §8); integration tests post them to OTC.
    for key in ("type", "lifecyclePhase", "name", "dashboard_url"):
        assert tool.parameters[key]
    assert tool.parameters["lifecyclePhase"] in (
        "THINK",
        "CODE",
        "DELIVER",
        "RUN",
        "MANAGE",
        "LEARN",
        "CULTURE",
    )
    assert "my%20mediator" in tool.parameters["dashboard_url"]
    assert tool.hash == desired_trigger_tool(_trigger(owner="my mediator"), "tc", TriggerToolStyle()).hash


def test_merge_patch_only_touches_what_we_own() -> None:
    current = {"a": 1, "b": 2, "server_default": True}
    patch = merge_patch_for(current, {"a": 1, "c": 3}, previously_applied={"a": 1, "b": 2})
    assert patch == {"c": 3, "b": None}
