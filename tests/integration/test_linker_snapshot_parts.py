"""github-linker and a snapshot published in parts (``shared.snapshot_parts``): it reads nothing
that is split (``repositories``, ``exists``, ``instance_revision`` go whole in every part), so the
first part of a revision to arrive applies it, whatever its number, and the others are skipped."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest

from shared.events import CloudEvent, InstanceRef, RoutingKeys, SnapshotData
from shared.snapshot_parts import split
from tests.integration.test_linker_flow import (
    REPO_A,
    REPO_B,
    Linker,
    instance,
    repos,
    running,
    service,
    summary,
)


@pytest.fixture(name="linker")
async def linker_fixture(amqp_url: str, mongodb_url: str) -> AsyncIterator[Linker]:
    async with running(amqp_url, mongodb_url) as linker:
        yield linker


def parts(urls: Sequence[str], revision: int, *, instance_revision: int) -> list[CloudEvent]:
    data = SnapshotData(
        instance=InstanceRef(cluster="c1", namespace="kabanero"),
        exists=True,
        repositories=repos(*urls),
        revision=revision,
        instance_revision=instance_revision,
        trigger_revisions={f"c1/kabanero/mediation/webhook/m{n:03d}": 1 for n in range(30)},
    ).model_dump(mode="json")
    return [
        CloudEvent.for_data(RoutingKeys.SNAPSHOT, SnapshotData.model_validate(p), source="test")
        for p in split(data, SnapshotData.split_fields, budget=400)
    ]


def stale(linker: Linker) -> float:
    return linker.registry.get_sample_value("kotc_github_linker_events_total", {"outcome": "stale"}) or 0.0


async def test_the_first_part_of_a_revision_applies_it_and_the_others_are_skipped(linker: Linker) -> None:
    await linker.publish(service("sid-p", "provisioned", ["tc-p"], 1))
    await linker.publish(instance([REPO_A], 1))
    assert summary(await linker.new_commands()) == {("apply", "tc-p", REPO_A)}

    grown = parts([REPO_A, REPO_B], 5, instance_revision=2)
    assert len(grown) >= 3
    await linker.publish(grown[1])  # part 2 first: it carries the repositories whole
    assert summary(await linker.new_commands()) == {("apply", "tc-p", REPO_B)}
    before = stale(linker)
    for event in (grown[0], *grown[2:], grown[1]):
        await linker.publish(event)
    assert await linker.new_commands() == []
    assert stale(linker) - before == len(grown)  # each later part (and the redelivery) skipped

    shrunk = parts([REPO_A], 6, instance_revision=3)
    await linker.publish(shrunk[-1])
    assert summary(await linker.new_commands()) == {("remove", "tc-p", REPO_B)}
