"""Store, patch and selector semantics of the Kubernetes API emulator, without HTTP."""

from __future__ import annotations

from typing import Any

import pytest

from emulators.json_merge_patch import merge_patch
from emulators.kube.errors import ApiError
from emulators.kube.patching import apply_patch, json_patch
from emulators.kube.seeding import documents
from emulators.kube.selectors import Selector
from emulators.kube.store import Store

NS = "kabanero"


def mediator(name: str = "webhook", **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "events.kabanero.io/v1alpha1",
        "kind": "EventMediator",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "spec": {"mediations": [{"name": "m1"}]},
    }


@pytest.fixture
def store() -> Store:
    return Store(history_window=5, auto_namespaces=True)


def drain(store: Store, resource_version: str | None, **kwargs: Any) -> list[tuple[str, str]]:
    sub = store.watch("eventmediators", resource_version=resource_version, **kwargs)
    store.unsubscribe(sub)
    return [(kind, obj["metadata"]["name"]) for kind, obj in sub.pending]


def test_unchanged_update_commits_nothing(store: Store) -> None:
    created = store.create(mediator())
    again = store.apply(mediator())
    assert again["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    assert store.resource_version == int(created["metadata"]["resourceVersion"])


def _summary(result: str) -> dict[str, Any]:
    """An EventMediator status (its CRD requires these four fields per summary entry)."""
    return {"summary": [{"operation": "send", "input": [], "result": result, "message": ""}]}


def test_generation_follows_spec_only(store: Store) -> None:
    store.create(mediator())
    assert store.patch_status("eventmediators", NS, "webhook", _summary("ok"))["metadata"]["generation"] == 1
    labelled = store.patch("eventmediators", NS, "webhook", {"metadata": {"labels": {"x": "y"}}})
    assert labelled["metadata"]["generation"] == 1
    changed = store.patch("eventmediators", NS, "webhook", {"spec": {"mediations": []}})
    assert changed["metadata"]["generation"] == 2
    assert changed["status"] == _summary("ok")
    # apply() routes a status through the status subresource
    applied = store.apply({**mediator(), "status": _summary("again")})
    assert applied["metadata"]["generation"] == 3 and applied["status"] == _summary("again")


def test_conflict_on_stale_resource_version(store: Store) -> None:
    created = store.create(mediator())
    store.patch("eventmediators", NS, "webhook", {"spec": {"x": 1}})
    with pytest.raises(ApiError) as exc:
        store.update(created)
    assert exc.value.code == 409 and exc.value.status()["reason"] == "Conflict"
    with pytest.raises(ApiError) as exc:
        store.delete("eventmediators", NS, "webhook", precondition_rv=created["metadata"]["resourceVersion"])
    assert exc.value.code == 409


def test_watch_replays_history_and_expires(store: Store) -> None:
    store.create(mediator("a"))
    start = str(store.resource_version)
    store.create(mediator("b"))
    store.delete("eventmediators", NS, "a")
    assert drain(store, start) == [("ADDED", "b"), ("DELETED", "a")]
    assert drain(store, None) == [("ADDED", "b")]
    assert drain(store, "0") == [("ADDED", "b")]
    for i in range(5):
        store.patch("eventmediators", NS, "b", {"spec": {"i": i}})
    with pytest.raises(ApiError) as exc:
        store.watch("eventmediators", resource_version=start)
    assert exc.value.code == 410
    assert (
        exc.value.message
        == f"too old resource version: {start} ({store.oldest_watchable(store.registry.resolve('eventmediators'))})"
    )
    # the window is per type: other types keep their history
    assert store.watch("namespaces", resource_version="1").pending


def test_selector_transitions_become_added_and_deleted(store: Store) -> None:
    store.create(mediator("a", team="x"))
    start = str(store.resource_version)
    store.patch("eventmediators", NS, "a", {"metadata": {"labels": {"team": "y"}}})
    store.patch("eventmediators", NS, "a", {"metadata": {"labels": {"team": "x"}}})
    assert drain(store, start, selector=Selector.parse("team=x", None)) == [("DELETED", "a"), ("ADDED", "a")]


def test_exact_list_reads_the_past(store: Store) -> None:
    store.create(mediator("a"))
    past = str(store.resource_version)
    store.patch("eventmediators", NS, "a", {"spec": {"new": True}})
    store.create(mediator("b"))
    body = store.list_body("eventmediators", resource_version=past, resource_version_match="Exact")
    assert body["metadata"]["resourceVersion"] == past
    assert [(i["metadata"]["name"], i["spec"]) for i in body["items"]] == [("a", mediator()["spec"])]
    with pytest.raises(ApiError) as exc:
        store.list_body("eventmediators", resource_version=str(store.resource_version + 5))
    assert exc.value.code == 504


def test_finalizer_flow_and_malformed_objects(store: Store) -> None:
    # validate=False stores what the API server would refuse (an object from before its CRD's schema).
    malformed = {**mediator(), "spec": "not-an-object", "metadata": {"name": "m", "finalizers": ["f"]}}
    with pytest.raises(ApiError) as refused:
        store.create(malformed)
    assert refused.value.code == 422
    store.create(malformed, validate=False)
    marked = store.delete("eventmediators", "default", "m")
    assert marked["metadata"]["deletionTimestamp"] and marked["spec"] == "not-an-object"
    assert marked["metadata"]["generation"] == 2  # the API server bumps it when marking for deletion
    assert store.delete("eventmediators", "default", "m") == marked  # idempotent while pending
    rv = str(store.resource_version)
    store.remove_finalizers("eventmediators", "default", "m")
    assert store.list_objects("eventmediators") == []
    assert drain(store, rv) == [("DELETED", "m")]


def test_names_and_namespaces(store: Store) -> None:
    with pytest.raises(ApiError) as exc:
        store.create({**mediator(), "metadata": {"name": "Bad_Name"}})
    assert exc.value.code == 422
    generated = store.create({**mediator(), "metadata": {"generateName": "gen-", "namespace": "new-ns"}})
    assert generated["metadata"]["name"].startswith("gen-")
    assert store.get("namespaces", None, "new-ns")["status"] == {"phase": "Active"}
    strict = Store()  # the default: like a real API server
    with pytest.raises(ApiError) as missing:
        strict.create(mediator())
    assert missing.value.code == 404


def test_patch_formats() -> None:
    assert merge_patch({"a": {"b": 1, "c": 2}}, {"a": {"b": None, "d": 3}}) == {"a": {"c": 2, "d": 3}}
    doc = {"spec": {"list": [1, 2]}}
    patched = json_patch(
        doc,
        [
            {"op": "add", "path": "/spec/list/-", "value": 3},
            {"op": "replace", "path": "/spec/list/0", "value": 0},
            {"op": "move", "from": "/spec/list", "path": "/spec/moved"},
            {"op": "test", "path": "/spec/moved", "value": [0, 2, 3]},
        ],
    )
    assert patched == {"spec": {"moved": [0, 2, 3]}} and doc == {"spec": {"list": [1, 2]}}
    smp = {"data": {"b": "2"}, "$setElementOrder/x": [], "metadata": {"$retainKeys": ["a"]}}
    assert apply_patch(
        {"data": {"a": "1"}}, smp, "application/strategic-merge-patch+json; charset=utf-8"
    ) == {
        "data": {"a": "1", "b": "2"},
        "metadata": {},
    }
    with pytest.raises(ApiError) as exc:
        apply_patch({}, {}, "application/apply-patch+yaml")
    assert exc.value.code == 415


@pytest.mark.parametrize(
    ("labels", "fields", "expected"),
    [
        pytest.param("team=x", None, True, id="eq"),
        pytest.param("team!=x", None, False, id="neq"),
        pytest.param("team in (x, y),tier", None, True, id="set-and-exists"),
        pytest.param("!tier", None, False, id="not-exists"),
        pytest.param(None, "metadata.name=a,metadata.namespace!=other", True, id="fields"),
    ],
)
def test_selectors(labels: str | None, fields: str | None, expected: bool) -> None:
    obj = {"metadata": {"name": "a", "namespace": NS, "labels": {"team": "x", "tier": "1"}}}
    assert Selector.parse(labels, fields).matches(obj) is expected


def test_unsupported_field_selector() -> None:
    with pytest.raises(ApiError) as exc:
        Selector.parse(None, "spec.version=1")
    assert exc.value.code == 400


def test_seed_documents_flatten_lists() -> None:
    text = "kind: List\nitems:\n- {kind: ConfigMap}\n- {kind: Lease}\n---\n---\nkind: Stack\n"
    assert [d["kind"] for d in documents(text)] == ["ConfigMap", "Lease", "Stack"]
