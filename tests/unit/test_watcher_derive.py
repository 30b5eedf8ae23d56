"""Derivation of repositories and triggers (kabanero.md §6, §7) and the cache's Desired state."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from services.kabanero_watcher.cache import CONNECTIONS, KABANEROS, MEDIATORS, ClusterCache
from services.kabanero_watcher.derive import (
    Malformed,
    content_hash,
    derive_legacy_triggers,
    derive_mediation_triggers,
    instance_repositories,
)


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


def test_repositories_from_all_four_places_deduplicated_git_release_wins() -> None:
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
    assert [(r.url, r.kind, r.ref) for r in repos] == [
        ("https://github.com/acme/pipes", "pipeline", "1.0"),
        ("https://github.acme.com/platform/stacks", "gitops", "v2"),
        ("https://github.com/acme/triggers", "trigger", "main"),
    ]
    assert repos[0].source == "spec.stacks.pipelines[d]"


def test_unknown_urls_are_kept_raw_and_incomplete_git_release_falls_back_to_https() -> None:
    partial = dict(GIT_RELEASE, release="")
    spec = {
        "stacks": {
            "pipelines": [{"id": "x", "gitRelease": partial, "https": {"url": "https://files.acme/p.tgz/"}}]
        }
    }
    (repo,) = instance_repositories(_cr(spec))
    assert (repo.url, repo.kind) == ("https://files.acme/p.tgz", "unknown")


def test_legacy_triggers_accept_flat_url_and_use_sha256_as_version() -> None:
    spec: dict[str, Any] = {
        "triggers": [
            {"id": "a", "sha256": "s1", "url": "https://h/a.tgz"},
            {"id": "b", "sha256": "s2", "gitRelease": GIT_RELEASE},
        ]
    }
    a, b = derive_legacy_triggers("c", _cr(spec))
    assert a.key.id == "c/ns/legacy/kabanero/a" and a.version == "s1" and a.url == "https://h/a.tgz"
    assert b.url == "https://github.acme.com/platform/stacks/releases/download/v2/a.tgz"
    changed = copy.deepcopy(spec)
    changed["triggers"][0]["sha256"] = "s9"
    a2, b2 = derive_legacy_triggers("c", _cr(changed))
    assert a2.content_hash != a.content_hash and b2.content_hash == b.content_hash


def test_mediation_content_includes_matching_connections_only() -> None:
    med = _mediator([{"name": "m1", "sendTo": ["dest"]}, {"name": "m2"}], createListener=True)
    conns = [
        ("c1", {"from": {"mediator": {"name": "webhook", "mediation": "m1"}}, "to": [{"https": [{"url": "https://u1"}]}]}),
        ("c1", {"from": {"mediator": {"name": "webhook"}}, "to": [{"https": [{"urlExpression": "body.x"}]}]}),
        ("c2", {"from": {"mediator": {"name": "other", "mediation": "m1"}}, "to": [{"https": [{"url": "https://no"}]}]}),
    ]  # fmt: skip
    m1, m2 = derive_mediation_triggers("c", med, conns)
    assert m1.key.id == "c/ns/mediation/webhook/m1"
    assert m1.destinations == ["https://u1", "body.x"]
    assert m2.destinations == ["body.x"]
    assert m1.content["mediator"] == {"createListener": True}
    # Order of connections does not matter; mediator-level fields do.
    again, _ = derive_mediation_triggers("c", med, list(reversed(conns)))
    assert again.content_hash == m1.content_hash
    other, _ = derive_mediation_triggers(
        "c", _mediator(med["spec"]["mediations"], createListener=False), conns
    )
    assert other.content_hash != m1.content_hash


@pytest.mark.parametrize(
    "mediations",
    [pytest.param("x", id="not-a-list"), pytest.param([{"selector": {}}], id="no-name"),
     pytest.param([{"name": "m", "sendTo": "d"}], id="sendTo-not-list"), pytest.param([5], id="item-not-object")],
)  # fmt: skip
def test_malformed_mediators_raise_malformed(mediations: Any) -> None:
    with pytest.raises(Malformed):
        derive_mediation_triggers("c", _mediator(mediations), [])


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
    cache.replace(KABANEROS, None, [_cr({"triggers": [{"id": "t", "sha256": "s"}]})])
    cache.replace(MEDIATORS, None, [])
    assert cache.desired("ns").triggers == {}
    cache.set_absent(MEDIATORS, None)
    assert list(cache.desired("ns").triggers) == ["c/ns/legacy/kabanero/t"]
