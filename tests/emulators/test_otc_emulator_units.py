"""Unit tests of the OTC emulator's pure parts: JWT, merge-patch, paging, validation rules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from yarl import URL

from emulators.json_merge_patch import merge_patch
from emulators.otc.clock import Clock
from emulators.otc.errors import ApiError
from emulators.otc.iam import TokenIssuer, decode_jwt, encode_jwt
from emulators.otc.paging import decode_cursor, encode_cursor, paginate, parse_limit
from emulators.otc.settings import OtcEmulatorSettings
from emulators.otc.validation import check_name, normalize_parameters


def test_jwt_round_trip_and_tampering() -> None:
    token = encode_jwt({"sub": "x", "exp": 10}, b"k")
    assert decode_jwt(token, b"k") == {"sub": "x", "exp": 10}
    assert decode_jwt(token, b"other") is None
    head, _, sig = token.split(".")
    forged = encode_jwt({"sub": "y", "exp": 10}, b"k").split(".")[1]
    assert decode_jwt(f"{head}.{forged}.{sig}", b"k") is None
    assert decode_jwt("a.b", b"k") is None


def test_token_verification_follows_the_clock() -> None:
    clock = Clock()
    issuer = TokenIssuer(OtcEmulatorSettings(api_keys=("k",), token_ttl=10), clock)
    token = issuer.issue("k", "http://x")["access_token"]
    assert issuer.verify_bearer(f"Bearer {token}")["token_use"] == "access"
    clock.advance(11)
    with pytest.raises(ApiError) as info:
        issuer.verify_bearer(f"Bearer {token}")
    assert (info.value.status, info.value.code) == (401, "token_expired")


@pytest.mark.parametrize(
    ("target", "patch", "result"),
    [  # RFC 7386 appendix A, abridged
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ],
)
def test_merge_patch(target: dict[str, Any], patch: dict[str, Any], result: dict[str, Any]) -> None:
    before = repr(target)
    assert merge_patch(target, patch) == result
    assert repr(target) == before


@dataclass
class Item:
    seq: int


def test_paging_links() -> None:
    items = [Item(n) for n in range(1, 26)]
    base = URL("http://x/tools")
    first = paginate(items, limit=10, start=None, href_base=base, query={})
    assert [i.seq for i in first.items] == list(range(1, 11))
    assert set(first.links) == {"first", "next", "last"}
    assert decode_cursor(first.links["next"]["start"]) == 10
    assert decode_cursor(first.links["last"]["start"]) == 20
    second = paginate(items, limit=10, start=first.links["next"]["start"], href_base=base, query={})
    assert [i.seq for i in second.items] == list(range(11, 21))
    assert "start" not in second.links["previous"]
    empty = paginate(list[Item](), limit=10, start=None, href_base=base, query={"a": "b"})
    assert empty.items == []
    assert empty.links == {
        "first": {"href": "http://x/tools?a=b&limit=10"},
        "last": {"href": "http://x/tools?a=b&limit=10"},
    }


@pytest.mark.parametrize("start", ["!!", encode_cursor(3)[:-1] + "@", "YmVmb3JlOjE"])
def test_bad_cursors(start: str) -> None:
    with pytest.raises(ApiError):
        decode_cursor(start)


def test_parse_limit() -> None:
    assert parse_limit(None, default=20, maximum=200) == 20
    assert parse_limit("200", default=20, maximum=200) == 200
    for bad in ("0", "201", "-1", "1.5"):
        with pytest.raises(ApiError):
            parse_limit(bad, default=20, maximum=200)


@pytest.mark.parametrize("name", ["a", "A-b_c.d e", "ünï", "x" * 128])
def test_valid_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "a/b", "a:b", "tab\t", "x" * 129, 5])
def test_invalid_names(name: object) -> None:
    with pytest.raises(ApiError):
        check_name(name)


def test_defaults_only_on_create() -> None:
    params = {"type": "link", "repo_url": "https://github.com/a/b"}
    assert normalize_parameters("githubconsolidated", params, create=True)["git_id"] == "github"
    assert "git_id" not in normalize_parameters("githubconsolidated", params, create=False)
    assert "git_id" not in params
    assert normalize_parameters("jenkins", {"anything": 1}, create=True) == {"anything": 1}
