"""MongoDB's hard limits, refused as a real server (7.0, the version the emulator advertises) refuses them.

mongoeco stores documents of any size and depth, so without this a test could never see what a
real server refuses: a 17 MB document was stored and read back. Each refusal carries the real
server's code and message (mongodb/mongo r7.0: ``src/mongo/db/ops/insert.cpp``,
``src/mongo/db/exec/update_stage.cpp``, ``upsert_stage.cpp``, ``update/storage_validation.cpp``,
``bson/bsonobj.h``), over the wire as a real one sends it, so PyMongo raises the same exception
types: a write error (``WriteError``/``BulkWriteError``) for a document the server would not store,
a command error (``OperationFailure``) for a command or statement it would not even parse.

- insert of a document over 16 MiB: code 2, "object to insert too large. size in bytes: N, max
  size: 16777216";
- upsert creating one: code 17420, "Document to upsert is larger than 16777216";
- update or replace of an existing one: code 17419, "Resulting document after update is larger
  than 16777216" (over 16 MiB + 16 KiB the server fails earlier, building it: code 10334);
- a command document or write statement over 16 MiB + 16 KiB (the server's internal allowance):
  command error 10334 ``BSONObjectTooLarge``, "BSONObj size: N (0x..) is invalid. Size must be
  between 0 and 16793600(16MB) ...";
- a stored document nested more than 100 levels: code 45 ``Overflow``.

``_id`` of array or regex type is refused by mongoeco itself (code 53), as by a real server.
Dollar-prefixed field names are *not* refused in inserts and upserts: MongoDB 5.0+ stores them.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any, Literal

import bson
from mongoeco.errors import WriteError
from mongoeco.wire._framing import WireProtocolError
from mongoeco.wire.bson_bridge import encode_wire_value

MAX_BSON_SIZE = 16 * 1024 * 1024
"""``BSONObjMaxUserSize``: a stored document (and the ``maxBsonObjectSize`` hello advertises)."""
MAX_INTERNAL_SIZE = MAX_BSON_SIZE + 16 * 1024
"""``BSONObjMaxInternalSize``: any BSON object the server parses or builds."""
MAX_DEPTH = 100
"""``BSONDepth::getMaxDepthForUserStorage``: levels of non-empty objects/arrays, the root included."""

Write = Literal["insert", "update"]
_write: ContextVar[Write] = ContextVar("emulators.mongo.limits.write", default="insert")


@contextlib.contextmanager
def writing(kind: Write) -> Iterator[None]:
    """Mark the engine call under way: the same stored document is refused with another code by
    an insert than by an update (an upsert creating a document is the update kind)."""
    token = _write.set(kind)
    try:
        yield
    finally:
        _write.reset(token)


def check_stored(document: dict[str, Any], *, replaces_existing: bool) -> None:
    """Raise the real server's write error when it would refuse to store ``document``."""
    kind = _write.get()
    if _depth(document) > MAX_DEPTH:
        message = (
            f"cannot insert document because it exceeds {MAX_DEPTH} levels of nesting"
            if kind == "insert"
            else f"Document exceeds maximum nesting depth of {MAX_DEPTH}"
        )
        raise WriteError(message, code=45)
    size = bson_size(document)
    if size <= MAX_BSON_SIZE:
        return
    if kind == "insert":
        raise WriteError(
            f"object to insert too large. size in bytes: {size}, max size: {MAX_BSON_SIZE}", code=2
        )
    if size > MAX_INTERNAL_SIZE:
        raise WriteError(invalid_size_message(size, _first_element(document)), code=10334)
    if replaces_existing:
        raise WriteError(f"Resulting document after update is larger than {MAX_BSON_SIZE}", code=17419)
    raise WriteError(f"Document to upsert is larger than {MAX_BSON_SIZE}", code=17420)


def bson_size(document: dict[str, Any]) -> int:
    return len(bson.encode(encode_wire_value(document)))


def _depth(document: Any) -> int:
    """Levels of non-empty objects and arrays (empty ones do not count, as for the server)."""
    deepest, stack = 0, [(document, 1)]
    while stack:
        value, level = stack.pop()
        deepest = max(deepest, level)
        children = value.values() if isinstance(value, dict) else value
        stack.extend((c, level + 1) for c in children if isinstance(c, dict | list) and c)
    return deepest


def invalid_size_message(size: int, first_element: str) -> str:
    return (
        f"BSONObj size: {size} (0x{size:X}) is invalid. Size must be between 0 and "
        f"{MAX_INTERNAL_SIZE}(16MB) First element: {first_element}"
    )


def _first_element(document: dict[str, Any]) -> str:
    for name, value in document.items():
        return f"{name}: {value!r}"[:80]
    return "EOO"


def check_op_msg(payload: bytes) -> None:
    """Refuse an OP_MSG whose command document or any document of a sequence (a write statement)
    exceeds the internal size, as the server's parser does: a command error, nothing executed."""
    position = 4  # flag bits
    checksum_present = struct.unpack_from("<I", payload, 0)[0] & 1
    end = len(payload) - (4 if checksum_present else 0)
    while position < end:
        kind = payload[position]
        position += 1
        if kind == 0:
            _check_object(payload, position)
            position += struct.unpack_from("<i", payload, position)[0]
        elif kind == 1:
            section_end = position + struct.unpack_from("<i", payload, position)[0]
            position = payload.index(0, position + 4, section_end) + 1
            while position < section_end:
                _check_object(payload, position)
                position += struct.unpack_from("<i", payload, position)[0]
        else:
            return  # mongoeco reports a malformed message itself


def _check_object(payload: bytes, position: int) -> None:
    size = struct.unpack_from("<i", payload, position)[0]
    if size > MAX_INTERNAL_SIZE:
        first = _first_raw_element(payload, position)
        raise WireProtocolError(invalid_size_message(size, first), code=10334, code_name="BSONObjectTooLarge")


def _first_raw_element(payload: bytes, position: int) -> str:
    """The first element's name (its value would need decoding 16 MB)."""
    start = position + 5
    try:
        name = payload[start : payload.index(0, start, start + 256)].decode("utf-8", "replace")
    except ValueError:
        return "EOO"
    return f"{name}: ..."
