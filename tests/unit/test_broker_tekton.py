"""The Tekton broker's rules without I/O: parameters, label, dashboard URL, settings, OpenAPI."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from cryptography.fernet import Fernet
from pydantic import ValidationError

from services.broker_api import instances
from services.broker_api.crypto import CredentialsCipher
from services.broker_api.errors import BadRequest
from services.broker_api.kinds import RULES, tekton_label
from services.broker_api.models import Parameters, ProvisionRequest, UpdateRequest
from services.broker_api.openapi import openapi_spec
from services.broker_api.settings import Settings, load_settings
from shared.settings import SettingsError

KEY = Fernet.generate_key().decode()
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _settings(**kw: object) -> Settings:
    base: dict[str, object] = {"broker_id": "otc", "broker_secret": "s3cret", "credentials_key": KEY}
    return Settings(**{**base, "allowed_clusters": "c1,c2", **kw})  # type: ignore[arg-type]


def _provision(body: dict[str, object], **kw: object) -> instances.Change:
    s = _settings(**kw)
    change = instances.provision(
        None,
        kind="tekton",
        sid="t-1",
        req=ProvisionRequest.model_validate({"service_id": "tekton", **body}),
        policy=instances.Policy(s),
        cipher=CredentialsCipher(s.credentials_key),
        now=NOW,
    )
    assert change is not None
    return change


def test_namespaces_are_deduplicated_and_sorted_and_the_label_names_them() -> None:
    rec = _provision({"parameters": {"cluster": "c2", "namespaces": ["b", "a", "b"]}}).record
    assert rec.key == "tekton:t-1" and rec.kind == "tekton"
    p = rec.parameters
    assert (p.cluster, p.namespaces, p.namespace, p.name, p.events, p.create, p.instance) == (
        "c2",
        ["a", "b"],
        "",
        None,
        None,
        False,
        None,
    )
    assert RULES["tekton"].label(p) == "Tekton on c2 (a, b)"
    assert rec.dashboard_url == "https://tekton-dashboard-tekton-pipelines.apps.c2.example.com/"


def test_a_long_namespace_list_makes_a_short_label() -> None:
    p = Parameters(cluster="c", namespace="", namespaces=[f"ns{i}" for i in range(10)])
    assert tekton_label(p) == "Tekton on c (ns0, ns1, ns2 +7 more)"
    assert tekton_label(p.model_copy(update={"namespaces": None})) == "Tekton on c"


def test_patch_keeps_what_it_does_not_name_and_null_means_every_namespace() -> None:
    s = _settings()
    policy, cipher = instances.Policy(s), CredentialsCipher(s.credentials_key)
    rec = _provision({"parameters": {"cluster": "c2", "namespaces": ["a"]}}).record

    def patch(params: dict[str, object]) -> instances.Change | None:
        req = UpdateRequest.model_validate({"parameters": params})
        return instances.update(rec, kind="tekton", sid="t-1", req=req, policy=policy, cipher=cipher, now=NOW)

    assert patch({}) is None and patch({"namespaces": ["a", "a"]}) is None
    moved = patch({"cluster": "c1"})
    assert moved is not None and (moved.record.parameters.cluster, moved.record.parameters.namespaces) == (
        "c1",
        ["a"],
    )
    every = patch({"namespaces": None})
    assert every is not None and every.record.parameters.namespaces is None
    with pytest.raises(BadRequest, match=r"'parameters\.namespace' does not apply"):
        patch({"namespace": "a"})


@pytest.mark.parametrize("key", ["namespace", "name", "events", "create", "instance"])
def test_keys_of_the_other_brokers_are_refused_naming_them(key: str) -> None:
    value: object = {"namespace": "a", "name": "k", "events": "auto", "create": True, "instance": {}}[key]
    with pytest.raises(BadRequest, match=rf"'parameters\.{key}' does not apply to this broker"):
        _provision({"parameters": {key: value}})
    assert _provision({"parameters": {key: None}}).record.parameters.namespaces is None


def test_the_kabanero_brokers_ignore_namespaces() -> None:
    s = _settings()
    for kind in ("kabanero", "kabanero-events"):
        change = instances.provision(
            None,
            kind=kind,
            sid="k",
            req=ProvisionRequest.model_validate({"service_id": kind, "parameters": {"namespaces": ["a"]}}),
            policy=instances.Policy(s),
            cipher=CredentialsCipher(s.credentials_key),
            now=NOW,
        )
        assert change is not None and change.record.parameters.namespaces is None
        assert change.record.parameters.namespace == "kabanero"


def test_with_a_public_url_the_dashboard_is_broker_apis_own_page() -> None:
    rec = _provision({}, broker_public_url="https://kotc.example.com").record
    s = _settings()
    links = instances.Policy(s).links
    token = rec.dashboard_url.rsplit("/", 1)[1]
    assert rec.dashboard_url == f"https://kotc.example.com/dashboard/tekton/t-1/{token}"
    assert links.valid("t-1", token, "tekton") and not links.valid("t-1", token, "kabanero")


def test_the_brokers_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _settings().served == ("kabanero-broker", "kabanero-events-broker", "tekton-broker")
    assert _settings(brokers=" tekton-broker ,").served == ("tekton-broker",)
    for env in ("BROKER_ID", "BROKER_SECRET", "CREDENTIALS_KEY"):
        monkeypatch.setenv(env, {"BROKER_ID": "otc", "BROKER_SECRET": "s", "CREDENTIALS_KEY": KEY}[env])
    for bad in ("tekton", "", "kabanero-broker,nope-broker"):
        monkeypatch.setenv("BROKERS", bad)
        with pytest.raises(SettingsError, match="BROKERS"):
            load_settings()


def test_the_tekton_pattern_takes_only_its_placeholders() -> None:
    with pytest.raises(ValidationError, match="placeholder"):
        _settings(tekton_dashboard_url_pattern="https://x/{namespace}/")
    s = _settings(
        tekton_dashboard_url_pattern="https://tekton.{cluster}.example.com/{service_id}/{instance_id}"
    )
    rec = instances.provision(
        None,
        kind="tekton",
        sid="s1",
        req=ProvisionRequest.model_validate({"service_id": "tekton"}),
        policy=instances.Policy(s),
        cipher=CredentialsCipher(s.credentials_key),
        now=NOW,
    )
    assert rec is not None and rec.record.dashboard_url == "https://tekton.c1.example.com/tekton/s1"


def test_openapi_of_a_tekton_only_deployment() -> None:
    spec = openapi_spec("test", ("c1",), ("tekton-broker",))
    assert {p.split("/")[1] for p in spec["paths"] if "/api/v1/" in p} == {"tekton-broker"}
    assert (
        "/dashboard/tekton/{sid}/{token}" in spec["paths"] and "/dashboard/{sid}/{token}" not in spec["paths"]
    )
    schemas = spec["components"]["schemas"]
    put = spec["paths"]["/tekton-broker/api/v1/service_instances/{sid}"]["put"]
    assert put["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ProvisionRequest_tekton"
    }
    params = schemas["ParametersIn_tekton"]["properties"]
    assert params["namespace"]["type"] == "null" and params["create"]["type"] == "null"
    assert params["cluster"]["anyOf"][0]["enum"] == ["c1"]
    listed = params["namespaces"]["anyOf"][0]
    assert (listed["minItems"], listed["maxItems"]) == (1, 100)
    assert "ProvisionRequest_kabanero" not in schemas and "DashboardView" not in schemas
    full = openapi_spec("test", ("c1",))
    assert {p.split("/")[1] for p in full["paths"] if "/api/v1/" in p} == {
        "kabanero-broker",
        "kabanero-events-broker",
        "tekton-broker",
    }
