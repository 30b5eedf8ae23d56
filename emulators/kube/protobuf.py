"""Request bodies in Kubernetes' protobuf encoding (`application/vnd.kubernetes.protobuf`), for the kinds
kubectl's typed commands send that way (`kubectl create namespace`, `kubectl create configmap`).

kubectl sends built-in kinds as protobuf and does not retry in JSON when the server answers 415
(kubectl 1.32, checked against this emulator), so the emulator decodes them. The envelope is the
4-byte magic `k8s\\x00` and a `runtime.Unknown` {1: typeMeta {1: apiVersion, 2: kind}, 2: raw,
3: contentEncoding, 4: contentType}; `raw` is the object's message (k8s.io/api core/v1 and apimachinery
meta/v1 generated.proto field numbers, cited in docs/design.md). Decoded: Namespace {metadata, spec
{finalizers}, status {phase}} and ConfigMap {metadata, data, binaryData, immutable}; ObjectMeta's name,
generateName, namespace, uid, resourceVersion, labels, annotations and finalizers. Any other kind, and
any other field that carries a value, is a 415 naming it (never silently dropped): send JSON instead.
An empty nested message is the zero value Go marshals for unset structs (creationTimestamp), so it is
skipped. Answers stay JSON, which kubectl accepts (`Accept: ...protobuf,application/json`).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from typing import Any

from .errors import ApiError

MEDIA_TYPE = "application/vnd.kubernetes.protobuf"
MAGIC = b"k8s\x00"

Obj = dict[str, Any]
Field = tuple[int, int, int | bytes]


def _unsupported(what: str) -> ApiError:
    return ApiError(
        415,
        "UnsupportedMediaType",
        f"the emulator does not decode {what} from {MEDIA_TYPE}; send application/json",
    )


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ApiError(400, "BadRequest", "protobuf body is truncated (varint)")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def fields(data: bytes) -> Iterator[Field]:
    """(number, wire type, value) of each field of one message: an int for varints and fixed-size
    values, the bytes for length-delimited ones."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if pos + size > len(data):
                raise ApiError(400, "BadRequest", "protobuf body is truncated (fixed)")
            value, pos = int.from_bytes(data[pos : pos + size], "little"), pos + size
        elif wire == 2:
            size, pos = _varint(data, pos)
            if pos + size > len(data):
                raise ApiError(400, "BadRequest", "protobuf body is truncated (bytes)")
            value, pos = data[pos : pos + size], pos + size
        else:
            raise ApiError(400, "BadRequest", f"protobuf wire type {wire} is not valid")
        yield number, wire, value


def _bytes(value: int | bytes, where: str) -> bytes:
    if not isinstance(value, bytes):
        raise ApiError(400, "BadRequest", f"protobuf field {where} is not length-delimited")
    return value


def _text(value: int | bytes, where: str) -> str:
    try:
        return _bytes(value, where).decode()
    except UnicodeDecodeError as exc:
        raise ApiError(400, "BadRequest", f"protobuf field {where} is not UTF-8") from exc


def _entry(value: int | bytes, where: str) -> tuple[str, bytes]:
    """A map<string, V> entry {1: key, 2: value}."""
    key, item = "", b""
    for number, _, part in fields(_bytes(value, where)):
        if number == 1:
            key = _text(part, f"{where}.key")
        elif number == 2:
            item = _bytes(part, f"{where}.value")
    return key, item


def _message(data: bytes, kind: str, known: dict[int, Callable[[Obj, int | bytes], None]]) -> Obj:
    """Decode one message with one handler per known field number; other non-empty fields are a 415."""
    out: Obj = {}
    for number, _, value in fields(data):
        handler = known.get(number)
        if handler is not None:
            handler(out, value)
        elif value not in (b"", 0):
            raise _unsupported(f"field {number} of {kind}")
    return out


def _set(name: str) -> Callable[[Obj, int | bytes], None]:
    def handle(out: Obj, value: int | bytes) -> None:
        text = _text(value, name)
        if text:  # Go marshals unset strings as ""; JSON omits them
            out[name] = text

    return handle


def _append(name: str) -> Callable[[Obj, int | bytes], None]:
    def handle(out: Obj, value: int | bytes) -> None:
        out.setdefault(name, []).append(_text(value, name))

    return handle


def _map(name: str, *, binary: bool = False) -> Callable[[Obj, int | bytes], None]:
    def handle(out: Obj, value: int | bytes) -> None:
        key, item = _entry(value, name)
        out.setdefault(name, {})[key] = base64.b64encode(item).decode() if binary else item.decode()

    return handle


def _object_meta(data: bytes) -> Obj:
    return _message(
        data,
        "ObjectMeta",
        {
            1: _set("name"),
            2: _set("generateName"),
            3: _set("namespace"),
            5: _set("uid"),
            6: _set("resourceVersion"),
            11: _map("labels"),
            12: _map("annotations"),
            14: _append("finalizers"),
        },
    )


def _nested(name: str, decode: Callable[[bytes], Obj]) -> Callable[[Obj, int | bytes], None]:
    def handle(out: Obj, value: int | bytes) -> None:
        out[name] = decode(_bytes(value, name))

    return handle


def _namespace(raw: bytes) -> Obj:
    return _message(
        raw,
        "Namespace",
        {
            1: _nested("metadata", _object_meta),
            2: _nested("spec", lambda d: _message(d, "NamespaceSpec", {1: _append("finalizers")})),
            3: _nested("status", lambda d: _message(d, "NamespaceStatus", {1: _set("phase")})),
        },
    )


def _immutable(out: Obj, value: int | bytes) -> None:
    out["immutable"] = bool(value)


def _configmap(raw: bytes) -> Obj:
    return _message(
        raw,
        "ConfigMap",
        {
            1: _nested("metadata", _object_meta),
            2: _map("data"),
            3: _map("binaryData", binary=True),
            4: _immutable,
        },
    )


_DECODERS: dict[tuple[str, str], Callable[[bytes], Obj]] = {
    ("v1", "Namespace"): _namespace,
    ("v1", "ConfigMap"): _configmap,
}


def decode(body: bytes) -> Obj:
    """The JSON form of a protobuf-encoded object, or a 415 for what the emulator does not decode."""
    if not body.startswith(MAGIC):
        raise ApiError(400, "BadRequest", "protobuf body does not start with the k8s\\x00 magic")
    type_meta: Obj = {}
    raw = b""
    for number, _, value in fields(body[len(MAGIC) :]):
        if number == 1:
            type_meta = _message(
                _bytes(value, "typeMeta"), "TypeMeta", {1: _set("apiVersion"), 2: _set("kind")}
            )
        elif number == 2:
            raw = _bytes(value, "raw")
        elif number == 3 and value:
            raise _unsupported("a contentEncoding")
    api_version, kind = type_meta.get("apiVersion", ""), type_meta.get("kind", "")
    decoder = _DECODERS.get((api_version, kind))
    if decoder is None:
        raise _unsupported(f"{kind or 'an object'} ({api_version or 'no apiVersion'})")
    obj = decoder(raw)
    return {"apiVersion": api_version, "kind": kind, **obj}
