"""``kabanero-otc resync`` without I/O: the request/reply helper's gathering, which replies count, the
problems and the report. End to end (a real watcher answering, otc-writer caught up, an unknown
cluster): tests/e2e/test_cli.py."""

from __future__ import annotations

import asyncio
import json
import time

from kotc_cli import resync, rpc
from kotc_cli.errors import OK, PROBLEM
from shared.events import CloudEvent, ResyncReply, ResyncRequest, RoutingKeys


def _reply(cluster: str, **snapshots: int) -> CloudEvent:
    reply = ResyncReply(cluster=cluster, holder=f"{cluster}-leader", snapshots=snapshots)
    return CloudEvent.for_data("control.resync.reply", reply, source=f"/kabanero-watcher/{cluster}")


def test_the_request_carries_its_reply_queue_and_correlation() -> None:
    event = CloudEvent.for_data(RoutingKeys.CONTROL_RESYNC, ResyncRequest(cluster="c"), source="/cli")
    message = rpc.request_message(event, reply_to="inbox", correlation_id="abc")
    assert (message.reply_to, message.correlation_id, message.message_id) == ("inbox", "abc", event.id)
    sent = CloudEvent.model_validate_json(message.body)
    assert sent.type == event.type and ResyncRequest.model_validate(sent.data) == ResyncRequest(cluster="c")


async def test_replies_are_gathered_until_enough_and_malformed_ones_are_counted() -> None:
    got = asyncio.Queue[bytes]()
    for body in (b"not json", _reply("a").model_dump_json().encode(), _reply("b").model_dump_json().encode()):
        got.put_nowait(body)
    enough = resync.answered({"a"})
    replies = await rpc._gather(got, time.monotonic() + 60, enough)
    assert [e.data["cluster"] for e in replies.events] == ["a"] and replies.malformed == 1
    assert got.qsize() == 1  # b's reply was not needed


async def test_gathering_stops_at_the_deadline() -> None:
    replies = await rpc._gather(asyncio.Queue[bytes](), time.monotonic() - 1, resync.answered(set()))
    assert replies.events == [] and replies.malformed == 0


def test_enough_means_every_expected_cluster_or_with_none_known_any() -> None:
    assert not resync.answered({"a", "b"})([_reply("a")])
    assert resync.answered({"a", "b"})([_reply("a"), _reply("b")])
    assert not resync.answered(set())([])
    assert resync.answered(set())([_reply("z")])


def test_a_reply_that_is_not_a_resync_reply_is_counted_not_guessed() -> None:
    other = CloudEvent.for_data(RoutingKeys.CONTROL_RESYNC, ResyncRequest(), source="/x")
    replies, bad = resync.replies_of([_reply("a", kabanero=3), other])
    assert set(replies) == {"a"} and bad == 1


def test_problems() -> None:
    assert resync.problems(resync.Found(expected={"a"}, routed=False), 60) == [
        "no kabanero-watcher is connected to RabbitMQ to take the request"
    ]
    assert resync.problems(resync.Found(expected={"x"}), 3) == [
        "no leading watcher answered within 3s for cluster(s) x"
    ]
    a = ResyncReply.model_validate(_reply("a", ns=1).data)
    partly = resync.Found(
        expected={"a", "b"}, replies={"a": a}, malformed=2, behind=["q: 1 message(s) waiting"]
    )
    assert resync.problems(partly, 60) == [
        "no leading watcher answered for cluster(s) b",
        "2 malformed reply(ies) ignored",
        "otc-writer has not caught up: q: 1 message(s) waiting",
    ]
    assert resync.problems(resync.Found(expected={"a"}, replies={"a": a}), 60) == []


def test_render_keeps_the_json_keys() -> None:
    a = ResyncReply.model_validate(_reply("a", kabanero=7).data)
    found = resync.Found(expected={"a"}, replies={"a": a}, seconds=1.234)
    report = resync.render(found, [], vhost="v")
    assert report.code == OK
    assert json.loads(report.render(as_json=True)) == {
        "vhost": "v",
        "leaders": {"a": "a-leader"},
        "snapshots": {"a/kabanero": 7},
        "caught_up": True,
        "seconds": 1.23,
        "problems": [],
    }
    assert report.render(as_json=False).endswith("otc-writer caught up in 1.2s")
    assert resync.render(found, ["late"], vhost="v").code == PROBLEM
