"""``parameters.events`` (auto | manual) of the Kabanero broker, without I/O: which Events tool
commands each call implies, and that only the tools the service added are ever removed."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr, ValidationError

from services.broker_api import instances
from services.broker_api.crypto import CredentialsCipher
from services.broker_api.instances import Change, EventsToolOp
from services.broker_api.models import BindRequest, InstanceRecord, ProvisionRequest, UpdateRequest
from services.broker_api.settings import Settings
from services.broker_api.store import EVENTS_TOOL_PURPOSE, events_tool_command

KEY = Fernet.generate_key().decode()
NOW = datetime(2026, 1, 1, tzinfo=UTC)
CIPHER = CredentialsCipher(SecretStr(KEY))


def _policy(**kw: object) -> instances.Policy:
    base: dict[str, object] = {"broker_id": "otc", "broker_secret": "s", "credentials_key": KEY}
    return instances.Policy(Settings(**{**base, **kw}))  # type: ignore[arg-type]


def _provision(params: dict[str, object], policy: instances.Policy | None = None) -> InstanceRecord:
    req = ProvisionRequest.model_validate({"service_id": "kabanero", "parameters": params})
    change = instances.provision(
        None, kind="kabanero", sid="s1", req=req, policy=policy or _policy(), cipher=CIPHER, now=NOW
    )
    assert change is not None
    return change.record


def _bind(rec: InstanceRecord, tid: str) -> Change:
    change = instances.bind(
        rec, tid=tid, req=BindRequest.model_validate({"toolchain_credentials": "c"}), cipher=CIPHER, now=NOW
    )
    assert change is not None
    return change


def test_default_comes_from_the_setting_and_is_kabanero_only() -> None:
    assert _provision({}).parameters.events == "manual"
    assert _provision({}, _policy(auto_events_service="auto")).parameters.events == "auto"
    assert _provision({"events": "manual"}, _policy(auto_events_service="auto")).parameters.events == "manual"
    req = ProvisionRequest.model_validate({"service_id": "kabanero-events", "parameters": {"events": "auto"}})
    change = instances.provision(
        None, kind="kabanero-events", sid="e", req=req, policy=_policy(), cipher=CIPHER, now=NOW
    )
    assert change is not None and change.record.parameters.events is None


def test_bad_value_names_the_field() -> None:
    with pytest.raises(ValidationError) as info:
        ProvisionRequest.model_validate({"service_id": "kabanero", "parameters": {"events": "always"}})
    assert info.value.errors()[0]["loc"] == ("parameters", "events")


def test_auto_bind_adds_once_unbind_removes_only_its_own() -> None:
    rec = _provision({"events": "auto"})
    first = _bind(rec, "tc1")
    assert first.tools == (EventsToolOp("apply", "tc1"),)
    assert first.record.events_tools == ["tc1"]
    # A repeat bind is no change at all (no event, no command).
    assert (
        instances.bind(
            first.record,
            tid="tc1",
            req=BindRequest.model_validate({"toolchain_credentials": "c"}),
            cipher=CIPHER,
            now=NOW,
        )
        is None
    )
    both = _bind(first.record, "tc2").record
    gone = instances.unbind(both, tid="tc1", now=NOW)
    assert gone is not None and gone.tools == (EventsToolOp("remove", "tc1"),)
    assert gone.record.events_tools == ["tc2"]
    deleted = instances.deprovision(gone.record, now=NOW)
    assert deleted is not None and deleted.tools == (EventsToolOp("remove", "tc2"),)


def test_manual_adds_nothing_and_auto_to_manual_leaves_tools_in_place() -> None:
    manual = _bind(_provision({}), "tc1")
    assert manual.tools == () and manual.record.events_tools == []
    unbound = instances.unbind(manual.record, tid="tc1", now=NOW)
    assert unbound is not None and unbound.tools == ()

    auto = _bind(_provision({"events": "auto"}), "tc1").record
    req = UpdateRequest.model_validate({"parameters": {"events": "manual"}})
    patched = instances.update(
        auto, kind="kabanero", sid="s1", req=req, policy=_policy(), cipher=CIPHER, now=NOW
    )
    assert patched is not None and patched.tools == ()  # nothing removed
    assert patched.record.events_tools == ["tc1"]  # still ours: removed on unbind/delete
    assert _bind(patched.record, "tc2").tools == ()  # no new ones while manual
    # manual -> auto: the toolchains bound already get theirs.
    back = instances.update(
        _bind(patched.record, "tc2").record,
        kind="kabanero",
        sid="s1",
        req=UpdateRequest.model_validate({"parameters": {"events": "auto"}}),
        policy=_policy(),
        cipher=CIPHER,
        now=NOW,
    )
    assert back is not None and back.tools == (EventsToolOp("apply", "tc2"),)


def test_events_tool_command_is_deterministic_and_names_the_instance() -> None:
    rec = _provision({"cluster": "default", "namespace": "team-a", "name": "kab", "events": "auto"})
    cmd = events_tool_command(rec, "tc1", 7)
    assert cmd == events_tool_command(rec, "tc1", 7)
    assert (cmd.purpose, cmd.key, cmd.tool_type_id, cmd.revision) == (
        EVENTS_TOOL_PURPOSE,
        "kabanero-events-auto:s1",
        "kabanero-events",
        7,
    )
    assert cmd.parameters == {"cluster": "default", "namespace": "team-a", "name": "kab"}
    assert cmd.name.startswith("kabanero-events default team-a auto ")
