"""CRDs in the kube emulator's store (install, upgrade, removal, reset), the v1beta1 -> v1 CRD conversion,
Kubernetes' version priority, and the protobuf request bodies kubectl sends."""

from __future__ import annotations

import pytest

from emulators.kube import crd, protobuf
from emulators.kube.errors import ApiError
from emulators.kube.resources import Registry, kube_version_key
from emulators.kube.selectors import Selector
from emulators.kube.store import Store


def pipeline(name: str, api_version: str = "tekton.dev/v1alpha1") -> dict[str, object]:
    return {"apiVersion": api_version, "kind": "Pipeline", "metadata": {"name": name, "namespace": "ci"}}


@pytest.fixture
def store() -> Store:
    return Store(auto_namespaces=True)


def test_versions_sort_as_kubernetes_prefers_them() -> None:
    given = ["v1alpha1", "foo", "v1", "v1beta1", "v2", "v1beta2", "v11alpha2", "v10"]
    assert sorted(given, key=kube_version_key) == [
        "v10", "v2", "v1", "v1beta2", "v1beta1", "v11alpha2", "v1alpha1", "foo",
    ]  # fmt: skip
    registry = Registry()
    assert registry.versions("kabanero.io") == ["v1alpha2", "v1alpha1"]  # unchanged for Kabanero


def test_a_v1beta1_crd_is_converted_as_the_api_server_does() -> None:
    (pipelines,) = [
        d for d in crd.bundle("tekton-v0.10.1") if d["metadata"]["name"] == "pipelines.tekton.dev"
    ]
    assert pipelines["apiVersion"] == "apiextensions.k8s.io/v1"
    assert pipelines["spec"]["versions"] == [
        {"name": "v1alpha1", "served": True, "storage": True, "subresources": {"status": {}}}
    ]
    assert "version" not in pipelines["spec"] and "subresources" not in pipelines["spec"]
    (config,) = crd.bundle("openshift-pipelines-operator")
    schema = config["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert schema["properties"]["spec"]["required"] == ["targetNamespace"]
    columns = config["spec"]["versions"][0]["additionalPrinterColumns"]
    assert columns[0]["jsonPath"] == ".status.conditions[0].code"


def test_an_unknown_bundle_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"tekton-v0\.11\.3"):
        crd.bundle("tekton-v9")


def test_installing_serves_and_deleting_removes_the_objects_with_events(store: Store) -> None:
    with pytest.raises(KeyError):
        store.registry.resolve("pipelines.tekton.dev")
    store.install_crds(crd.bundle("tekton-v0.10.1"))
    store.create(pipeline("p"))
    sub = store.watch("pipelines.tekton.dev", None, Selector(), str(store.resource_version))
    store.uninstall_crds(["pipelines.tekton.dev"])
    assert [(kind, obj["metadata"]["name"]) for kind, obj in sub.pending] == [("DELETED", "p")]
    assert sub.drop_mode == "drain"  # the stream sends the DELETED, then ends
    with pytest.raises(KeyError):
        store.registry.resolve("pipelines.tekton.dev")
    assert "eventlisteners.tekton.dev" in store.installed_crds()
    store.install_crds(crd.bundle("tekton-v0.10.1"))
    assert store.list_objects("pipelines.tekton.dev") == []


def test_an_upgrade_keeps_the_objects_and_serves_the_new_versions(store: Store) -> None:
    """Applying v0.11.3's CRDs over v0.10.1's (an upgrade) keeps the Pipelines; v1beta1 is served too, and
    the open watches end so clients re-watch the new resource."""
    store.install_crds(crd.bundle("tekton-v0.10.1"))
    store.create(pipeline("p"))
    sub = store.watch("pipelines.tekton.dev")
    store.install_crds(crd.bundle("tekton-v0.11.3"))
    assert sub.drop_mode == "close"
    rt = store.registry.by_path("tekton.dev", "v1beta1", "pipelines")
    assert rt is not None and rt.served == ("v1alpha1", "v1beta1")
    assert [o["metadata"]["name"] for o in store.list_objects(rt)] == ["p"]
    assert store.registry.versions("tekton.dev") == ["v1beta1", "v1alpha1"]
    # Triggers moved group: tekton.dev's eventlisteners CRD stays until deleted, as on a real cluster.
    assert {"eventlisteners.tekton.dev", "eventlisteners.triggers.tekton.dev"} <= set(store.installed_crds())


def test_a_crd_is_refused_with_the_api_servers_reasons(store: Store) -> None:
    (definition,) = crd.bundle("openshift-pipelines-operator")
    bad = {**definition, "metadata": {"name": "configs.operator.tekton.dev"}}
    with pytest.raises(ApiError) as misnamed:
        store.create(bad)
    assert misnamed.value.code == 422 and "metadata.name" in misnamed.value.message
    no_storage = {
        **definition,
        "spec": {**definition["spec"], "versions": [{"name": "v1alpha1", "served": True}]},
    }
    with pytest.raises(ApiError) as unstored:
        store.create(no_storage)
    assert "spec.versions" in unstored.value.message
    assert store.installed_crds() == []


def test_reset_installs_the_boot_crds_again() -> None:
    store = Store(crds=crd.bundle("tekton-v0.11.3"), auto_namespaces=True)
    store.install_crds(crd.bundle("openshift-pipelines-operator"))
    store.create(pipeline("p", "tekton.dev/v1beta1"))
    store.reset()
    assert "config.operator.tekton.dev" not in store.installed_crds()
    assert "pipelines.tekton.dev" in store.installed_crds()
    assert store.list_objects("pipelines.tekton.dev") == []


# ---------------------------------------------------------------------- protobuf


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _entry(key: str, value: str) -> bytes:
    return _field(1, key.encode()) + _field(2, value.encode())


def _envelope(kind: str, raw: bytes) -> bytes:
    type_meta = _field(1, b"v1") + _field(2, kind.encode())
    return protobuf.MAGIC + _field(1, type_meta) + _field(2, raw) + _field(3, b"") + _field(4, b"")


def test_a_namespace_in_protobuf_decodes_as_kubectl_sends_it() -> None:
    meta = _field(1, b"tekton-pipelines") + _field(2, b"") + _field(8, b"") + _field(11, _entry("team", "ci"))
    raw = _field(1, meta) + _field(2, b"") + _field(3, b"")
    assert protobuf.decode(_envelope("Namespace", raw)) == {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "tekton-pipelines", "labels": {"team": "ci"}},
        "spec": {},
        "status": {},
    }


def test_a_configmap_in_protobuf_decodes_with_its_data() -> None:
    raw = _field(1, _field(1, b"pipelines-info")) + _field(2, _entry("version", "v0.11.3"))
    raw += _field(3, _field(1, b"blob") + _field(2, b"\x00\x01")) + _varint(4 << 3) + _varint(1)
    decoded = protobuf.decode(_envelope("ConfigMap", raw))
    assert decoded["data"] == {"version": "v0.11.3"}
    assert decoded["binaryData"] == {"blob": "AAE="}
    assert decoded["immutable"] is True


def test_protobuf_that_is_not_decoded_is_refused_by_name() -> None:
    owner = _field(13, _field(1, b"v1"))  # ObjectMeta.ownerReferences with a value
    with pytest.raises(ApiError) as field:
        protobuf.decode(_envelope("Namespace", _field(1, _field(1, b"x") + owner)))
    assert field.value.code == 415 and "field 13 of ObjectMeta" in field.value.message
    with pytest.raises(ApiError) as kind:
        protobuf.decode(_envelope("Service", b""))
    assert kind.value.code == 415 and "Service" in kind.value.message
    with pytest.raises(ApiError) as truncated:
        protobuf.decode(protobuf.MAGIC + _varint(1 << 3 | 2) + _varint(50) + b"short")
    assert truncated.value.code == 400
    with pytest.raises(ApiError) as magic:
        protobuf.decode(b"{}")
    assert magic.value.code == 400
