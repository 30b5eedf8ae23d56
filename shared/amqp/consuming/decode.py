"""Reading a delivery once: the CloudEvent envelope, then the typed model of its data.

A consumer is given a decoder (``decode``); what it returns is what ``key_of``, ``revision_of`` and
the handler receive, so the data is validated exactly once per delivery. :class:`DataModels` is the
usual decoder: routing-key patterns to pydantic models (:class:`DataModel`: one model for every
message of the queue), giving a :class:`Delivery` that carries the event and its typed data. Without a decoder they receive the :class:`CloudEvent` itself.

Whatever cannot be read is an :class:`InvalidMessage` (a :class:`PermanentError`): dead-lettered at
once with a reason naming the field, never retried, and it never takes a place in a lane.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pydantic

from shared.amqp.consuming.errors import InvalidMessage
from shared.events import CloudEvent

type Decoder[M] = Callable[[CloudEvent], M]


def envelope(body: bytes) -> CloudEvent:
    try:
        return CloudEvent.model_validate_json(body)
    except pydantic.ValidationError as exc:
        raise InvalidMessage("invalid CloudEvent envelope", exc) from exc


def decode_with[M](decode: Decoder[M], event: CloudEvent) -> M:
    """``decode(event)``; whatever a decoder of one's own raises is an :class:`InvalidMessage` (it
    depends on the message only, like a ``key_of`` that raises: retrying cannot help)."""
    try:
        return decode(event)
    except InvalidMessage:
        raise
    except pydantic.ValidationError as exc:
        raise InvalidMessage(f"invalid data: {summary(exc)}", exc) from exc
    except Exception as exc:
        raise InvalidMessage("cannot decode", exc) from exc


@dataclass(frozen=True, slots=True)
class Delivery[D]:
    """A delivered CloudEvent and its data, decoded once into the model its routing key names."""

    event: CloudEvent
    data: D

    @property
    def routing_key(self) -> str:
        return self.event.routing_key

    @property
    def id(self) -> str:
        return self.event.id


class DataModels[D: pydantic.BaseModel]:
    """A decoder: ``{routing-key pattern: model}``, patterns in AMQP topic syntax (``*`` one word,
    ``#`` any number). The first pattern that matches decides; a routing key no pattern matches gives
    ``data=None`` (the handler ignores it, as a consumer must for a key bound by a newer version)."""

    def __init__(self, models: Mapping[str, type[D]]) -> None:
        self._models = [(_topic(pattern), model) for pattern, model in models.items()]

    def model_for(self, routing_key: str) -> type[D] | None:
        return next((m for pattern, m in self._models if pattern.fullmatch(routing_key)), None)

    def __call__(self, event: CloudEvent) -> Delivery[D | None]:
        model = self.model_for(event.routing_key)
        if model is None:
            return Delivery(event, None)
        try:
            return Delivery(event, model.model_validate(event.data))
        except pydantic.ValidationError as exc:
            raise InvalidMessage(f"invalid {model.__name__}: {summary(exc)}", exc) from exc


class DataModel[D: pydantic.BaseModel]:
    """A decoder for a queue whose every message carries one model (whatever its routing key)."""

    def __init__(self, model: type[D]) -> None:
        self._model = model

    def __call__(self, event: CloudEvent) -> Delivery[D]:
        try:
            return Delivery(event, self._model.model_validate(event.data))
        except pydantic.ValidationError as exc:
            raise InvalidMessage(f"invalid {self._model.__name__}: {summary(exc)}", exc) from exc


def summary(exc: pydantic.ValidationError, limit: int = 3) -> str:
    """The failing fields of ``data`` and why, short enough for a header (the full error goes in
    ``x-kotc-error``)."""
    errors = exc.errors()
    parts = [f"{'.'.join(['data', *map(str, e['loc'])])}: {e['msg']}" for e in errors[:limit]]
    more = f" (+{len(errors) - limit} more)" if len(errors) > limit else ""
    return ("; ".join(parts) + more)[:500]


def _topic(pattern: str) -> re.Pattern[str]:
    words = ["[^.]+" if w == "*" else ".*" if w == "#" else re.escape(w) for w in pattern.split(".")]
    return re.compile(r"\.".join(words))
