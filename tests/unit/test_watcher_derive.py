"""Derivation of repositories and triggers (kabanero.md §6, §7) and the cache's Desired state."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from services.kabanero_watcher.cache import CONNECTIONS, KABANEROS, MEDIATORS, ClusterCache
from services.kabanero_watcher.derive import (
    Malformed,
    check_connections,
    derive_legacy_trigger,
    derive_mediation_triggers,
    events_enabled,
    instance_repositories,
)
from shared.events import content_hash


def _cr(spec: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "kabanero", "namespace": "ns", "uid": "u1"}, "spec": spec}


def _mediator(mediations: Any, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "webhook", "namespace": "ns"}, "spec": {"mediations": mediations, **spec}}


GIT_RELEASE = {
    "hostname": "github.acme.com",
    "organization": "platform",
    "project": "stacks",
    "release": "v2",
    "assetName": "a.tgz",
}


def test_repository_pipelines_replace_the_instance_ones_and_git_release_wins() -> None:
    spec = {
        "stacks": {
            "pipelines": [{"id": "d", "https": {"url": "https://github.com/acme/pipes/releases/download/1.0/d.tar.gz"}}],
            "repositories": [
                {"name": "hub", "https": {"url": "https://example.com/index.yaml"},
                 "pipelines": [{"id": "p", "https": {"url": "https://github.com/acme/pipes/releases/download/2.0/x.tgz"}}]},
            ],
        },
        "gitops": {"pipelines": [{"id": "g", "gitRelease": GIT_RELEASE, "https": {"url": "https://ignored/x.tgz"}}]},
        "triggers": [{"id": "t", "url": "https://raw.githubusercontent.com/acme/triggers.git/main/t.tgz"}],
    }  # fmt: skip
    repos = instance_repositories(_cr(spec))
    # featured_stacks.go: the hub's own pipelines (2.0) replace spec.stacks.pipelines (1.0); the
    # trigger entry is not a repository of the CR alone (only a namespace's legacy trigger is).
    assert [(r.url, r.kinds, r.refs) for r in repos] == [
        ("https://example.com/index.yaml", ["unknown"], []),
        ("https://github.com/acme/pipes", ["pipeline"], ["2.0"]),
        ("https://github.acme.com/platform/stacks", ["gitops"], ["v2"]),
    ]
    assert repos[1].source == "spec.stacks.repositories[hub].pipelines[p]"


def test_instance_pipelines_apply_per_repository_and_unused_ones_are_no_repository() -> None:
    partial = dict(GIT_RELEASE, release="")
    pipelines = [{"id": "x", "gitRelease": partial, "https": {"url": "https://files.acme/p.tgz/"}}]
    assert instance_repositories(_cr({"stacks": {"pipelines": pipelines}})) == []
    hub = {"name": "hub", "https": {"url": "https://github.com/acme/hub/releases/download/1/i.yaml"}}
    hub_repo, pipe = instance_repositories(_cr({"stacks": {"pipelines": pipelines, "repositories": [hub]}}))
    assert (hub_repo.url, hub_repo.kinds, hub_repo.refs) == (
        "https://github.com/acme/hub",
        ["stack-hub"],
        ["1"],
    )
    # An incomplete gitRelease is not usable: https.url is read, and it names no repository.
    assert (pipe.url, pipe.kinds) == ("https://files.acme/p.tgz", ["unknown"])


def test_one_repository_keeps_every_kind_and_ref() -> None:
    url = "https://github.com/acme/everything/releases/download/{}/a.tgz"
    spec = {
        "stacks": {
            "repositories": [{"name": "hub", "https": {"url": url.format("hub-1")}}],
            "pipelines": [{"id": "d", "https": {"url": url.format("p-2")}}],
        },
        "gitops": {"pipelines": [{"id": "g", "https": {"url": url.format("p-2")}}]},
    }
    (repo,) = instance_repositories(_cr(spec))
    assert (repo.url, repo.kinds, repo.refs) == (
        "https://github.com/acme/everything", ["stack-hub", "pipeline", "gitops"], ["hub-1", "p-2"]
    )  # fmt: skip


def test_v1alpha1_collections_are_stack_hubs_after_the_stack_repositories() -> None:
    spec = {
        "stacks": {"repositories": [{"name": "a", "https": {"url": "https://github.com/o/a/releases/download/1/i.yaml"}}]},
        "collections": {"repositories": [{"name": "c", "url": "https://github.com/o/c/releases/download/2/i.yaml"}]},
    }  # fmt: skip
    assert [(r.url, r.kinds, r.source) for r in instance_repositories(_cr(spec))] == [
        ("https://github.com/o/a", ["stack-hub"], "spec.stacks.repositories[a]"),
        ("https://github.com/o/c", ["stack-hub"], "spec.collections.repositories[c]"),
    ]


def test_legacy_trigger_is_the_first_entry_with_a_flat_url_across_the_namespace() -> None:
    spec: dict[str, Any] = {
        "events": {"enable": True},
        "triggers": [
            {"id": "b", "sha256": "s2", "gitRelease": GIT_RELEASE},
            {"id": "a", "sha256": "s1", "url": "https://h/a.tgz"},
        ],
    }
    other = _cr({"triggers": [{"id": "z", "sha256": "s0", "url": "https://h/z.tgz"}]})
    other["metadata"]["name"] = "a-first"
    # Kabaneros in list (name) order: "a-first" has events off but kabanero-events, deployed by the
    # other CR, lists every Kabanero of its namespace.
    trigger = derive_legacy_trigger("c", [other, _cr(spec)])
    assert trigger is not None and trigger.key.id == "c/ns/legacy/a-first/z" and trigger.version == "s0"
    a = derive_legacy_trigger("c", [_cr(spec)])
    assert a is not None and (a.key.name, a.version, a.url) == ("a", "s1", "https://h/a.tgz")
    assert derive_legacy_trigger("c", [_cr(spec | {"events": {}})]) is None  # events off by default
    b = derive_legacy_trigger("c", [_cr(spec)], fields="any")
    assert b is not None and b.url == "https://github.acme.com/platform/stacks/releases/download/v2/a.tgz"
    changed = copy.deepcopy(spec)
    changed["triggers"][1]["sha256"] = "s9"
    a2 = derive_legacy_trigger("c", [_cr(changed)])
    assert a2 is not None and a2.content_hash != a.content_hash and a2.version == "s9"


def test_mediation_destinations_need_mediator_mediation_and_destination_to_match() -> None:
    med = _mediator([{"name": "m1", "sendTo": ["dest"]}, {"name": "m2"}], createListener=True)
    conns = [
        ("c1", {"from": {"mediator": {"name": "webhook", "mediation": "m1", "destination": "dest"}}, "to": [{"https": [{"url": "https://u1"}]}]}),
        ("c1", {"from": {"mediator": {"name": "webhook", "mediation": "m1", "destination": "other"}}, "to": [{"https": [{"url": "https://no-dest"}]}]}),
        ("c1", {"from": {"mediator": {"name": "webhook"}}, "to": [{"https": [{"urlExpression": "body.x"}]}]}),
        ("c2", {"from": {"mediator": {"name": "other", "mediation": "m1", "destination": "dest"}}, "to": [{"https": [{"url": "https://no"}]}]}),
    ]  # fmt: skip
    m1, m2 = derive_mediation_triggers("c", med, conns)
    assert m1.key.id == "c/ns/mediation/webhook/m1"
    assert m1.destinations == ["https://u1"]
    assert m2.destinations == []
    assert m1.content["mediator"] == {"createListener": True}
    assert m1.content["connections"] == [conns[0][1]]
    # Order of connections does not matter; mediator-level fields do.
    again, _ = derive_mediation_triggers("c", med, list(reversed(conns)))
    assert again.content_hash == m1.content_hash
    other, _ = derive_mediation_triggers(
        "c", _mediator(med["spec"]["mediations"], createListener=False), conns
    )
    assert other.content_hash != m1.content_hash


def test_connection_items_without_a_mediator_are_ignored_not_malformed() -> None:
    items: list[dict[str, Any]] = [
        {"from": {}, "to": []},
        {"from": {"mediator": {"name": "webhook"}}, "to": []},
    ]
    conn = {"metadata": {"name": "c", "namespace": "ns"}, "spec": {"connections": items}}
    assert check_connections(conn) == [items[1]]
    with pytest.raises(Malformed):
        check_connections({"metadata": conn["metadata"], "spec": {"connections": "x"}})


@pytest.mark.parametrize(
    "mediations",
    [pytest.param("x", id="not-a-list"), pytest.param([{"selector": {}}], id="no-name"),
     pytest.param([{"name": "m", "sendTo": "d"}], id="sendTo-not-list"), pytest.param([5], id="item-not-object")],
)  # fmt: skip
def test_malformed_mediators_raise_malformed(mediations: Any) -> None:
    with pytest.raises(Malformed):
        derive_mediation_triggers("c", _mediator(mediations), [])


@pytest.mark.parametrize("char", ["\x00", "\n", "\x1b", "\x85", "\ud800"])
def test_names_that_cannot_be_an_identity_are_malformed_and_not_echoed(char: str) -> None:
    """A name in a spec is free text (Kubernetes checks only object names): a control character
    in a mediation name or legacy trigger id refuses the object, the reason naming the field."""
    with pytest.raises(Malformed) as mediation:
        derive_mediation_triggers("c", _mediator([{"name": "ok"}, {"name": f"bad{char}name"}]), [])
    assert (
        str(mediation.value) == f"spec.mediations[1].name: contains the control character U+{ord(char):04X}"
    )
    entry = {"id": f"t{char}", "url": "https://h/a.tgz"}
    with pytest.raises(Malformed, match=r"spec\.triggers\[0\]\.id: contains the control character"):
        derive_legacy_trigger("c", [_cr({"events": {"enable": True}, "triggers": [entry]})])
    assert derive_mediation_triggers("c", _mediator([{"name": "tab\u00a0and émoji 😀"}]), [])


def test_content_hash_ignores_key_order() -> None:
    assert content_hash({"a": 1, "b": [1, {"x": 2, "y": 3}]}) == content_hash(
        {"b": [1, {"y": 3, "x": 2}], "a": 1}
    )


def test_cache_desired_freezes_what_a_malformed_object_owns() -> None:
    cache = ClusterCache("c", legacy_triggers="never")
    cache.replace(KABANEROS, None, [_cr({"version": "0.9"})])
    good = _mediator([{"name": "m1"}])
    bad = _mediator("oops")
    bad["metadata"]["name"] = "bad"
    cache.replace(MEDIATORS, None, [good, bad])
    cache.replace(CONNECTIONS, None, [])
    desired = cache.desired("ns")
    assert desired.instance is not None and desired.instance.version == "0.9"
    assert list(desired.triggers) == ["c/ns/mediation/webhook/m1"]
    assert desired.frozen_owners == {("mediation", "bad")}
    # Status and metadata noise do not change any hash.
    noisy = copy.deepcopy(good)
    noisy["status"] = {"summary": [1]}
    noisy["metadata"]["resourceVersion"] = "99"
    cache.apply(MEDIATORS, "MODIFIED", noisy)
    again = cache.desired("ns")
    assert (
        again.triggers["c/ns/mediation/webhook/m1"].content_hash
        == desired.triggers["c/ns/mediation/webhook/m1"].content_hash
    )


def test_legacy_triggers_auto_only_while_events_crds_are_absent() -> None:
    cache = ClusterCache("c")
    spec = {"events": {"enable": True}, "triggers": [{"id": "t", "sha256": "s", "url": "https://h/t.tgz"}]}
    cache.replace(KABANEROS, None, [_cr(spec)])
    cache.replace(MEDIATORS, None, [])
    assert cache.desired("ns").triggers == {}
    cache.set_absent(MEDIATORS, None)
    assert list(cache.desired("ns").triggers) == ["c/ns/legacy/kabanero/t"]


@pytest.mark.parametrize(
    ("events", "version", "operator_0_9", "enabled"),
    [
        ({}, "0.8.0", False, False),
        ({"enable": True}, "0.8.0", False, True),
        ({}, "0.9.2", True, True),
        ({}, None, True, True),
        ({}, "0.8.0", True, False),
        ({"version": "0.1.0"}, "0.9.2", True, False),
        ({"enable": False}, "0.9.2", True, False),
    ],
)
def test_events_enabled_as_each_operator_reads_it(
    events: dict[str, Any], version: str | None, operator_0_9: bool, enabled: bool
) -> None:
    spec: dict[str, Any] = {"events": events} | ({"version": version} if version else {})
    assert events_enabled(_cr(spec), operator_0_9=operator_0_9) is enabled


def test_mediators_are_triggers_only_where_a_kabanero_enables_events() -> None:
    cache = ClusterCache("c", legacy_triggers="never")
    cache.replace(MEDIATORS, None, [_mediator([{"name": "m1"}])])
    cache.replace(CONNECTIONS, None, [])
    assert cache.desired("ns").triggers == {}  # no Kabanero CR: no events operator here
    cache.replace(KABANEROS, None, [_cr({"version": "0.9.2", "events": {"enable": False}})])
    assert cache.desired("ns").triggers == {}
    cache.replace(KABANEROS, None, [_cr({"version": "0.9.2"})])
    assert list(cache.desired("ns").triggers) == ["c/ns/mediation/webhook/m1"]


def test_an_edit_of_one_mediation_re_derives_that_one_and_reuses_the_others() -> None:
    cache = ClusterCache("c", legacy_triggers="never")
    cache.replace(KABANEROS, None, [_cr({"version": "0.9.2"})])
    mediations: list[dict[str, Any]] = [
        {"name": f"m{i}", "selector": {"urlPattern": f"p{i}"}, "sendTo": ["d"]} for i in range(3)
    ]
    cache.replace(MEDIATORS, None, [_mediator(copy.deepcopy(mediations))])
    cache.replace(CONNECTIONS, None, [])
    first = cache.desired("ns").triggers
    edited = copy.deepcopy(mediations)
    edited[1]["selector"]["urlPattern"] = "changed"
    cache.apply(MEDIATORS, "MODIFIED", _mediator(edited))
    second = cache.desired("ns").triggers
    ids = [f"c/ns/mediation/webhook/m{i}" for i in range(3)]
    assert second[ids[0]] is first[ids[0]] and second[ids[2]] is first[ids[2]]
    assert second[ids[1]].content_hash != first[ids[1]].content_hash
    assert second[ids[1]].content_hash == content_hash(
        {"mediation": edited[1], "mediator": {}, "connections": []}
    )
    # A connection to m0 changes its content (destinations), so m0 is derived again.
    conn = {
        "from": {"mediator": {"name": "webhook", "mediation": "m0", "destination": "d"}},
        "to": [{"https": [{"url": "https://x"}]}],
    }
    cache.replace(
        CONNECTIONS, None, [{"metadata": {"name": "c1", "namespace": "ns"}, "spec": {"connections": [conn]}}]
    )
    third = cache.desired("ns").triggers
    assert third[ids[0]] is not second[ids[0]] and third[ids[0]].content["connections"] == [conn]
    assert third[ids[2]] is first[ids[2]]
    # Back to the first content: the same hash as at first, whatever was reused in between.
    cache.replace(CONNECTIONS, None, [])
    cache.apply(MEDIATORS, "MODIFIED", _mediator(copy.deepcopy(mediations)))
    assert {k: t.content_hash for k, t in cache.desired("ns").triggers.items()} == {
        k: t.content_hash for k, t in first.items()
    }
