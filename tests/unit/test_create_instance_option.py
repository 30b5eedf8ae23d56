"""``parameters.create`` / ``parameters.instance`` without I/O: the CRD schema check (a 400 naming
the field), the broker's rules, the watcher's ownership mark, and the opt-in RBAC overlay."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.fernet import Fernet
from pydantic import SecretStr

from services.broker_api import instances
from services.broker_api.crypto import CredentialsCipher
from services.broker_api.errors import BadRequest
from services.broker_api.instance_spec import CRD, spec_errors
from services.broker_api.models import InstanceRecord, ProvisionRequest, UpdateRequest
from services.broker_api.settings import Settings
from services.kabanero_watcher.owned_instances import label_value
from tests.helpers import kubectl_path

ROOT = Path(__file__).resolve().parents[2]
KEY = Fernet.generate_key().decode()
NOW = datetime(2026, 1, 1, tzinfo=UTC)
CIPHER = CredentialsCipher(SecretStr(KEY))
POLICY = instances.Policy(Settings(broker_id="otc", broker_secret="s", credentials_key=KEY))  # type: ignore[arg-type]
SPEC = {
    "version": "0.9.2",
    "stacks": {"repositories": [{"name": "hub", "https": {"url": "https://x/i.yaml"}}]},
}


def _provision(params: dict[str, Any], kind: str = "kabanero") -> InstanceRecord:
    req = ProvisionRequest.model_validate({"service_id": kind, "parameters": params})
    change = instances.provision(None, kind=kind, sid="s1", req=req, policy=POLICY, cipher=CIPHER, now=NOW)  # type: ignore[arg-type]
    assert change is not None
    return change.record


def test_the_crd_is_the_one_the_kube_emulator_serves() -> None:
    assert CRD.read_bytes() == (ROOT / "emulators/kube/crds/kabanero.io_kabaneros_crd.yaml").read_bytes()


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"version": 9}, "parameters.instance.version: must be of type string"),
        ({"stacks": {"repositories": "x"}}, "parameters.instance.stacks.repositories: must be of type array"),
        (
            {"stacks": {"repositories": [{"https": {"url": 1}}]}},
            "parameters.instance.stacks.repositories[0].https.url: must be of type string",
        ),
        ({"events": {"enable": "yes"}}, "parameters.instance.events.enable: must be of type boolean"),
        ("not a spec", "parameters.instance: must be an object"),
        # Wider than an API server (and BSON) stores: schemathesis found a 500 for it.
        (
            {"somethingNew": {"n": [1, -483435975259889013358457782272]}},
            "parameters.instance.somethingNew.n[1]: must be a 64-bit integer",
        ),
        ({"version": "0.9.2", "x": 2**63}, "parameters.instance.x: must be a 64-bit integer"),
    ],
)
def test_spec_errors_name_the_field(spec: Any, field: str) -> None:
    errors = spec_errors(spec)
    assert errors and errors[0].startswith(field), errors


def test_a_valid_spec_and_unknown_fields_pass() -> None:
    assert spec_errors(SPEC) == []
    assert spec_errors({**SPEC, "somethingNew": {"a": 1}}) == []  # v1beta1, no pruning: kept as is


def test_broker_rules() -> None:
    rec = _provision({"namespace": "team", "create": True, "instance": SPEC})
    assert rec.parameters.create and rec.parameters.instance == SPEC
    assert _provision({"create": True}).parameters.instance == {}  # Kabanero's defaults
    inert = _provision({"instance": SPEC}).parameters  # kept, but nothing is created
    assert (inert.create, inert.instance) == (False, SPEC)
    with pytest.raises(BadRequest, match=r"parameters\.instance\.version: must be of type string"):
        _provision({"create": True, "instance": {"version": 1}})
    # The Events broker ignores both keys (a spec the CRD refuses is still a 400: same schema).
    assert not _provision({"create": True, "instance": SPEC}, "kabanero-events").parameters.create
    with pytest.raises(BadRequest):
        _provision({"instance": {"version": 1}}, "kabanero-events")

    def patch(params: dict[str, Any]) -> InstanceRecord | None:
        change = instances.update(
            rec,
            kind="kabanero",
            sid="s1",
            req=UpdateRequest.model_validate({"parameters": params}),
            policy=POLICY,
            cipher=CIPHER,
            now=NOW,
        )
        return change.record if change else None

    new_spec = {**SPEC, "version": "0.9.3"}
    patched = patch({"instance": new_spec})
    assert patched is not None and patched.parameters.instance == new_spec and patched.parameters.create
    with pytest.raises(BadRequest, match="cannot change while the service creates its instance"):
        patch({"namespace": "elsewhere"})
    with pytest.raises(BadRequest, match=r"parameters\.instance\.version"):
        patch({"instance": {"version": False}})
    assert patch({}) is None  # nothing changed: no write, no event


def test_ownership_label_is_a_valid_label_value() -> None:
    assert label_value("kab-1") == "kab-1"
    long = label_value("x" * 200)
    assert long.startswith("sha256-") and len(long) <= 63
    assert label_value("~odd~").startswith("sha256-")


def _rules(docs: list[dict[str, Any]], role: str) -> list[dict[str, Any]]:
    (found,) = [d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] == role]
    return list(found["rules"])


def test_write_verbs_on_kabaneros_only_in_the_opt_in_overlay() -> None:
    def render(path: str) -> list[dict[str, Any]]:
        out = subprocess.run(
            [kubectl_path(), "kustomize", str(ROOT / path)],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        return [d for d in yaml.safe_load_all(out) if d]

    base = render("k8s")
    write = {"create", "update", "patch", "delete", "deletecollection"}
    for doc in base:
        if doc["kind"] in ("ClusterRole", "Role"):
            for rule in doc["rules"]:
                if "kabanero.io" in rule["apiGroups"]:
                    assert not write & set(rule["verbs"]), doc["metadata"]["name"]
    overlay = render("k8s/overlays/create-instances")
    rules = _rules(overlay, "kabanero-otc-watcher-create-instances")
    assert rules[0] == {
        "apiGroups": ["kabanero.io"],
        "resources": ["kabaneros"],
        "verbs": ["create", "update", "delete"],
    }
    assert rules[1] == {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["create"]}
    (binding,) = [
        d
        for d in overlay
        if d["kind"] == "ClusterRoleBinding"
        and d["metadata"]["name"] == "kabanero-otc-watcher-create-instances"
    ]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "kabanero-watcher", "namespace": "kabanero-otc"}
    ]
