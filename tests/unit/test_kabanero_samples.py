"""Derivation against the samples Kabanero 0.6-0.9 publishes (tests/fixtures/kabanero): exact
repositories (URL, kinds, refs) and triggers (key, destinations, version) per case."""

from __future__ import annotations

from typing import Any

import pytest

from services.kabanero_watcher.cache import RESOURCES, ClusterCache
from services.kabanero_watcher.derive import Malformed, check_mediator
from services.kabanero_watcher.resources import ResourceSpec
from tests.kabanero_fixtures import Case, cases, repositories_view

_BY_KIND = {
    "Kabanero": "kabaneros.kabanero.io",
    "Stack": "stacks.kabanero.io",
    "EventMediator": "eventmediators.events.kabanero.io",
    "EventConnections": "eventconnections.events.kabanero.io",
    "ConfigMap": "configmaps",
}


def _resource(kind: str) -> ResourceSpec:
    return next(r for r in RESOURCES if r.name == _BY_KIND[kind])


def cache_of(case: Case, **options: Any) -> ClusterCache:
    cache = ClusterCache("c", **options)
    grouped: dict[str, list[dict[str, Any]]] = {r.name: [] for r in RESOURCES}
    for _, obj in case.objects():
        grouped[_BY_KIND[obj["kind"]]].append(obj)
    for resource in RESOURCES:
        if case.cluster == "legacy" and resource.group == "events.kabanero.io":
            cache.set_absent(resource, None)
        else:
            cache.replace(resource, None, grouped[resource.name])
    return cache


def triggers_view(case: Case, cache: ClusterCache) -> list[dict[str, Any]]:
    desired = cache.desired(case.namespace)
    out = []
    for key_id, trig in sorted(desired.triggers.items()):
        version = "content-hash" if trig.version == trig.content_hash else trig.version
        out.append(
            {
                "key": key_id.removeprefix(f"c/{case.namespace}/"),
                "destinations": trig.destinations,
                "version": version,
            }
        )
    return out


@pytest.mark.parametrize("case", list(cases().values()), ids=list(cases()))
def test_sample_yields_exactly_the_expected_repositories_and_triggers(case: Case) -> None:
    cache = cache_of(case)
    desired = cache.desired(case.namespace)
    assert not desired.instance_frozen and not desired.frozen_owners and not desired.all_mediations_frozen
    if not case.instance:
        assert desired.instance is None
    else:
        assert desired.instance is not None
        assert repositories_view(desired.instance.repositories) == case.repositories
    assert triggers_view(case, cache) == case.triggers


@pytest.mark.parametrize(
    "case", [c for c in cases().values() if c.rejected], ids=[n for n, c in cases().items() if c.rejected]
)
def test_documents_the_crd_refuses_are_malformed_for_the_watcher_too(case: Case) -> None:
    for _, obj in case.rejected_objects():
        with pytest.raises(Malformed, match=r"spec\.mediations\[0\]\.name"):
            check_mediator(obj)


def test_legacy_trigger_extension_takes_the_first_entry_with_any_location() -> None:
    case = cases()["derived-0.8.0-events-triggers"]
    (trigger,) = cache_of(case, legacy_trigger_fields="any").desired(case.namespace).triggers.values()
    assert trigger.key.name == "incubator"
    assert (
        trigger.url
        == "https://github.com/kabanero-io/kabanero-events/releases/download/0.1.0/incubator.trigger.tar.gz"
    )
    assert [(r.url, r.refs) for r in trigger.repositories] == [
        ("https://github.com/kabanero-io/kabanero-events", ["0.1.0"])
    ]


def test_published_0_6_to_0_8_samples_never_enable_events_so_they_have_no_trigger() -> None:
    # Without events.enable (false by default before 0.9) kabanero-events is not deployed, so even a
    # spec.triggers[] entry with a flat url is no trigger.
    case = cases()["derived-0.8.0-events-triggers"]
    cache = cache_of(case)
    (kabanero,) = [obj for _, obj in case.objects()]
    kabanero["spec"].pop("events")
    cache.replace(_resource("Kabanero"), None, [kabanero])
    assert cache.desired(case.namespace).triggers == {}
