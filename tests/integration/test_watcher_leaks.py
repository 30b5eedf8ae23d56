"""kabanero-watcher against emulators.kube and the real RabbitMQ: what a cluster holds that must
not leave it. URL credentials reach no event and no log line; a mediation name that cannot be an
identity (a NUL in it) is refused at the source, with the field named, until it is fixed."""

from __future__ import annotations

import logging

import pytest

from emulators.kube.testing import KubeEmulator
from shared.events import InstanceData, TriggerData
from shared.logs import JsonFormatter, TextFormatter
from tests.helpers import EventTap
from tests.integration.test_watcher_events import (
    TRIGGER,
    connections,
    kabanero,
    kube,  # noqa: F401 (fixture)
    mediator,
    ready,
    started,
    update_spec,
    watcher_settings,
)

SECRETS = ("ghp_TOKEN", "s3cr3t", "hunter2")


async def test_url_credentials_reach_no_event_and_no_log(
    kube: KubeEmulator,  # noqa: F811
    amqp_url: str,
    mongodb_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    cr = kabanero()
    hub = cr["spec"]["stacks"]["repositories"][0]["https"]
    hub["url"] = hub["url"].replace("https://", "https://user:ghp_TOKEN@") + "?token=s3cr3t"
    kube.store.create(cr)
    kube.store.create(mediator())
    kube.store.create(connections(url="https://user:hunter2@listener/a?access_token=s3cr3t"))
    async with EventTap(amqp_url, ("kabanero.#",)) as tap:
        runtime = await started(watcher_settings(kube, amqp_url, mongodb_url))
        try:
            await ready(runtime)
            (inst,) = await tap.wait_for(1, routing_key="kabanero.instance.changed")
            (created,) = await tap.wait_for(1, routing_key="kabanero.trigger.created")
            await tap.wait_for(1, routing_key="kabanero.snapshot")
        finally:
            await runtime.stop()
    assert InstanceData.model_validate(inst.data).repositories[0].url == "https://github.com/acme/stack-hub"
    assert TriggerData.model_validate(created.data).destinations == ["https://listener/a"]
    published = [e.model_dump_json() for e in tap.events]
    # Every line as the services write it (kubernetes_asyncio logs whole response bodies at DEBUG).
    logged = [f.format(r) for r in caplog.records for f in (JsonFormatter(), TextFormatter("%(message)s"))]
    for secret in SECRETS:
        assert not [p for p in published if secret in p]
        assert not [line for line in logged if secret in line]


async def test_a_mediation_name_with_a_nul_is_refused_until_fixed(
    kube: KubeEmulator,  # noqa: F811
    amqp_url: str,
    mongodb_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    kube.store.create(kabanero())
    kube.store.create(mediator(mediations=("appsody", "bad\u0000name")))
    async with EventTap(amqp_url, ("kabanero.#",)) as tap:
        runtime = await started(watcher_settings(kube, amqp_url, mongodb_url))
        try:
            await ready(runtime)
            await tap.wait_for(1, routing_key="kabanero.snapshot")
            # The mediator is malformed: nothing of it is published, the reason names the field.
            assert tap.of_type("kabanero.trigger.created") == []
            warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "malformed" in r.msg]
            assert any("spec.mediations[1].name" in str(getattr(r, "error", "")) for r in warnings)
            assert any("U+0000" in str(getattr(r, "error", "")) for r in warnings)
            assert not [r for r in caplog.records if "\x00" in JsonFormatter().format(r)]

            update_spec(
                kube, "eventmediators", "webhook", lambda s: s["mediations"][1].update(name="bad-name")
            )
            await tap.wait_for(2, routing_key="kabanero.trigger.created")
        finally:
            await runtime.stop()
    keys = sorted(TriggerData.model_validate(e.data).key.id for e in tap.of_type("kabanero.trigger.created"))
    assert keys == [TRIGGER, TRIGGER.replace("appsody", "bad-name")]
    assert not [e for e in tap.events if "\x00" in f"{e.id}{e.subject}"]  # in no key, id or subject
