"""Which storage errors can never succeed (``services.kabanero_watcher.refusals``): those set their
namespace aside; the others are retried."""

from __future__ import annotations

from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    DocumentTooLarge,
    NetworkTimeout,
    NotPrimaryError,
    OperationFailure,
    WriteConcernError,
    WriteError,
)

from services.kabanero_watcher.refusals import refusal


def bulk(*codes: int, concern: bool = False) -> BulkWriteError:
    return BulkWriteError(
        {
            "writeErrors": [{"index": 0, "code": c, "errmsg": f"error {c}"} for c in codes],
            "writeConcernErrors": [{"code": 64, "errmsg": "waiting for replication timed out"}]
            if concern
            else [],
        }
    )


def test_what_mongodb_refuses_for_what_it_holds_is_permanent() -> None:
    assert refusal(bulk(17419)) == "BulkWriteError 17419: error 17419"
    assert refusal(bulk(17420)) is not None
    assert refusal(bulk(2)) is not None
    assert refusal(WriteError("too deep", 45, {"errmsg": "too deep"})) == "WriteError 45: too deep"
    parse = OperationFailure("BSONObj size: 17001090 is invalid", 10334, {"errmsg": "BSONObj size"})
    assert refusal(parse) == "OperationFailure 10334: BSONObj size"
    assert refusal(DocumentTooLarge("BSON document too large")) is not None


def test_what_a_retry_may_pass_is_not() -> None:
    assert refusal(bulk(concern=True)) is None
    assert refusal(bulk(11600)) is None  # InterruptedAtShutdown
    assert refusal(WriteConcernError("timed out", 64, {})) is None
    assert refusal(AutoReconnect("connection closed")) is None
    assert refusal(NetworkTimeout("timed out")) is None
    assert refusal(NotPrimaryError("not primary", {})) is None
    assert refusal(OperationFailure("interrupted", 11601, {})) is None
