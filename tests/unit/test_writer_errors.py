"""How a message that touched several tools ends when some failed: permanent only when every
failure can never succeed (OTC refused, the message's own data, a value MongoDB cannot store)."""

from __future__ import annotations

import bson.errors
import pytest

from services.otc_writer.ledger import UnstorableKey
from services.otc_writer.otc_client import OtcPermanentError
from services.otc_writer.reconcile import _message_error
from shared.amqp import PermanentError, RetryableError


def test_every_kind_of_never_succeeding_failure_together_is_permanent() -> None:
    errors: list[BaseException] = [
        OtcPermanentError("Parameter 'x' is not allowed"),
        bson.errors.InvalidDocument("key 'a\\x00' must not contain null character"),
        UnstorableKey("ledger key 'k' contains a NUL character"),
    ]
    error = _message_error(errors)
    assert isinstance(error, PermanentError)
    assert "not allowed" in str(error) and "can never succeed: value BSON cannot store" in str(error)
    assert "contains a NUL character" in str(error)


def test_one_transient_failure_keeps_the_message_retried() -> None:
    error = _message_error([bson.errors.InvalidDocument("x"), ConnectionResetError("reset")])
    assert isinstance(error, RetryableError)


@pytest.mark.parametrize(
    "alone",
    [bson.errors.InvalidDocument("x"), UnstorableKey("k"), ValueError("v")],
    ids=lambda e: type(e).__name__,
)
def test_a_single_failure_is_left_to_the_consumer_to_classify(alone: Exception) -> None:
    assert _message_error([alone]) is alone
