"""broker-api without I/O: settings, request validation, the pure lifecycle functions, the cipher."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr, ValidationError

from services.broker_api import instances
from services.broker_api.crypto import CredentialsCipher
from services.broker_api.errors import BadRequest, NotFound, from_validation
from services.broker_api.models import (
    BindRequest,
    InstanceRecord,
    MessageRequest,
    ProvisionRequest,
    UpdateRequest,
)
from services.broker_api.openapi import openapi_spec
from services.broker_api.settings import Settings, load_settings
from shared.settings import SettingsError

KEY = Fernet.generate_key().decode()
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _settings(**kw: object) -> Settings:
    base: dict[str, object] = {"broker_id": "otc", "broker_secret": "s3cret", "credentials_key": KEY}
    return Settings(**{**base, **kw})  # type: ignore[arg-type]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("BROKER_ID", "BROKER_SECRET", "CREDENTIALS_KEY", "ALLOWED_CLUSTERS"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_missing_credentials_key_is_a_clear_error(env: pytest.MonkeyPatch) -> None:
    env.setenv("BROKER_ID", "otc")
    env.setenv("BROKER_SECRET", "s3cret")
    with pytest.raises(SettingsError, match="CREDENTIALS_KEY is required"):
        load_settings()


def test_invalid_credentials_key_is_named_and_not_echoed(env: pytest.MonkeyPatch) -> None:
    env.setenv("BROKER_ID", "otc")
    env.setenv("BROKER_SECRET", "s3cret")
    env.setenv("CREDENTIALS_KEY", "not-a-key-TOPSECRET")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "CREDENTIALS_KEY" in str(info.value)
    assert "TOPSECRET" not in str(info.value)


def test_settings_from_env(env: pytest.MonkeyPatch) -> None:
    env.setenv("BROKER_ID", "otc")
    env.setenv("BROKER_SECRET", "s3cret")
    env.setenv("CREDENTIALS_KEY", KEY)
    env.setenv("ALLOWED_CLUSTERS", "prod, dev")
    s = load_settings()
    assert s.clusters == ("prod", "dev")
    assert s.default_cluster == "prod"
    assert s.http_port == 8080
    assert "s3cret" not in repr(s)


def test_dashboard_pattern_with_unknown_placeholder_is_rejected() -> None:
    with pytest.raises(ValidationError, match="placeholder"):
        _settings(kabanero_dashboard_url_pattern="https://{nope}/")


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"namespace": "Bad_NS"}, "parameters.namespace"),
        ({"namespace": "a" * 64}, "parameters.namespace"),
        ({"name": "-x"}, "parameters.name"),
        ({"cluster": 5}, "parameters.cluster"),
    ],
)
def test_bad_parameters_name_the_field(params: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        ProvisionRequest.model_validate({"service_id": "kabanero", "parameters": params})
    err = from_validation(info.value)
    assert f"'{field}'" in err.description


def test_validation_errors_never_echo_secrets() -> None:
    with pytest.raises(ValidationError) as info:
        BindRequest.model_validate({"toolchain_credentials": ["TOPSECRET"]})
    assert "TOPSECRET" not in from_validation(info.value).description
    with pytest.raises(ValidationError) as info:
        MessageRequest.model_validate({"service_id": "toolchain", "instance_id": "x"})
    described = from_validation(info.value).description
    assert "'toolchain_id' is required" in described and "'payload' is required" in described


def test_unknown_fields_are_ignored_and_secrets_are_masked() -> None:
    req = ProvisionRequest.model_validate(
        {"service_id": "kabanero", "extra": 1, "service_credentials": "TOPSECRET", "parameters": {"x": 1}}
    )
    assert "TOPSECRET" not in repr(req)


def test_credentials_object_is_accepted_as_json() -> None:
    req = BindRequest.model_validate({"toolchain_credentials": {"a": 1}})
    assert req.toolchain_credentials.get_secret_value() == '{"a": 1}'


def _provision(rec: InstanceRecord | None, body: dict[str, object]) -> instances.Change | None:
    s = _settings(allowed_clusters="c1,c2")
    return instances.provision(
        rec,
        kind="kabanero",
        sid="sid-1",
        req=ProvisionRequest.model_validate({"service_id": "kabanero", **body}),
        policy=instances.Policy(s),
        cipher=CredentialsCipher(s.credentials_key),
        now=NOW,
    )


def test_provision_defaults_label_dashboard_and_idempotent_repeat() -> None:
    change = _provision(None, {"service_credentials": "sc"})
    assert change is not None
    rec = change.record
    assert (rec.parameters.cluster, rec.parameters.namespace) == ("c1", "kabanero")
    assert rec.parameters.label == "c1/kabanero"
    assert rec.dashboard_url == "https://kabanero-landing-kabanero.apps.c1.example.com/"
    assert [p.event for p in change.events] == ["provisioned"]
    assert rec.service_credentials is not None and rec.service_credentials != "sc"
    # same body again: nothing to do; omitted credentials are kept
    assert _provision(rec, {"service_credentials": "sc"}) is None
    assert _provision(rec, {}) is None
    upd = _provision(rec, {"parameters": {"cluster": "c2", "name": "k1"}})
    assert upd is not None and [p.event for p in upd.events] == ["updated"]
    assert upd.record.service_credentials == rec.service_credentials
    assert upd.record.parameters.label == "c2/kabanero/k1"


def test_unknown_cluster_is_rejected() -> None:
    with pytest.raises(BadRequest, match=r"parameters\.cluster"):
        _provision(None, {"parameters": {"cluster": "elsewhere"}})


def test_bind_unbind_all_and_deprovision_events() -> None:
    s = _settings()
    cipher = CredentialsCipher(s.credentials_key)
    first = _provision(None, {})
    assert first is not None
    rec = first.record
    for tid in ("t1", "t2", "t3"):
        change = instances.bind(
            rec, tid=tid, req=BindRequest(toolchain_credentials=SecretStr(f"c-{tid}")), cipher=cipher, now=NOW
        )
        assert change is not None and change.events[0].toolchain_id == tid
        rec = change.record
    assert rec.toolchain_ids == ["t1", "t2", "t3"]
    # repeat bind with the same credentials: no change at all
    same = BindRequest(toolchain_credentials=SecretStr("c-t2"))
    assert instances.bind(rec, tid="t2", req=same, cipher=cipher, now=NOW) is None
    assert instances.unbind(rec, tid="nope", now=NOW) is None
    everything = instances.unbind_all(rec, now=NOW)
    assert everything is not None
    assert [(p.event, p.toolchain_id, p.toolchains) for p in everything.events] == [
        ("unbound", "t1", ("t2", "t3")),
        ("unbound", "t2", ("t3",)),
        ("unbound", "t3", ()),
    ]
    gone = instances.deprovision(rec, now=NOW)
    assert gone is not None
    assert [p.event for p in gone.events] == ["unbound", "unbound", "unbound", "deprovisioned"]
    assert gone.record.state == "deleted"
    assert gone.record.service_credentials is None and gone.record.toolchains == []
    assert instances.deprovision(gone.record, now=NOW) is None
    with pytest.raises(NotFound):
        instances.bind(gone.record, tid="t9", req=same, cipher=cipher, now=NOW)
    with pytest.raises(NotFound):
        instances.update(
            None,
            kind="kabanero",
            sid="x",
            req=UpdateRequest(),
            policy=instances.Policy(s),
            cipher=cipher,
            now=NOW,
        )


def test_cipher_round_trip_and_constant_time_match() -> None:
    cipher = CredentialsCipher(SecretStr(KEY))
    token = cipher.encrypt(SecretStr("hello"))
    assert "hello" not in token
    assert cipher.matches(token, SecretStr("hello"))
    assert not cipher.matches(token, SecretStr("hell"))
    other = CredentialsCipher(SecretStr(Fernet.generate_key().decode()))
    assert not other.matches(token, SecretStr("hello"))


def test_openapi_documents_security_and_errors() -> None:
    spec = openapi_spec("test")
    op = spec["paths"]["/kabanero-broker/api/v1/service_instances/{sid}"]["put"]
    assert op["security"] == [{"brokerBasic": []}]
    assert {"200", "400", "401", "413"} <= set(op["responses"])
    assert spec["components"]["securitySchemes"]["brokerBasic"]["scheme"] == "basic"
    assert "ProvisionRequest" in spec["components"]["schemas"]
    assert spec["paths"]["/status"]["get"]["security"] == []
