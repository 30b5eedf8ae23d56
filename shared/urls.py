"""What of a URL may leave the cluster: never its userinfo, query or fragment.

A cluster's objects can carry credentials in URLs (``https://user:ghp_...@github.com/...``,
``https://listener/hook?access_token=...``): the Kabanero operators need them to download archives
and to post events, but we only mirror, so none of it may reach OTC, a message or a log. The
cleaning is textual and leaves every character outside those parts as it is, so a URL (or a text)
with nothing to strip is returned unchanged, and content hashes of clean objects stay the same.
"""

from __future__ import annotations

import re
from typing import Any

# A URL: scheme://, userinfo (up to the last "@" before the path: a password with an unencoded "?"
# or "#" is still userinfo, never kept as a host), host, path, then the query/fragment tail.
# Inside text, a URL also stops at quotes and angle brackets, so one quoted inside an expression
# keeps its quote; a text that is one URL (no whitespace) is taken whole, quotes and all.
_URL_IN_TEXT = re.compile(
    r"""([A-Za-z][A-Za-z0-9+.\-]*://)([^/\s"'<>]*@)?([^/?#\s"'<>]*)([^?#\s"'<>]*)(?:[?#][^\s"'<>]*)?"""
)
_WHOLE_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://)([^/\s]*@)?([^/?#\s]*)([^?#\s]*)(?:[?#]\S*)?")


def _clean_match(m: re.Match[str]) -> str:
    scheme, _userinfo, host, path = m.groups()
    return scheme + host + path


def scrub_urls(text: str) -> str:
    """``text`` with the userinfo, query and fragment of every ``scheme://`` URL in it removed.

    ``https://u:tok@host/p?access_token=x#f`` -> ``https://host/p``; text without such parts is
    returned as it is (the same object)."""
    if "://" not in text:
        return text
    whole = _WHOLE_URL.fullmatch(text)
    cleaned = _clean_match(whole) if whole else _URL_IN_TEXT.sub(_clean_match, text)
    return text if cleaned == text else cleaned


def without_credentials(url: str) -> str:
    """One URL (or URL-like text) without userinfo, query or fragment; a schemeless
    ``user@host:path`` (scp-like git) loses its ``user@`` as well. Otherwise unchanged."""
    if "://" in url:
        return scrub_urls(url)
    head, sep, rest = url.partition("/")
    if "@" in head:
        return head.rpartition("@")[2] + sep + rest
    return url


def scrub_values(value: Any) -> Any:
    """``value`` (JSON-like) with :func:`scrub_urls` applied to every string in it (not to keys).

    A container holding nothing to scrub is returned as it is (no copy), so equal input keeps
    equal output and its content hash."""
    if isinstance(value, str):
        return scrub_urls(value)
    if isinstance(value, dict):
        changed: dict[Any, Any] | None = None
        for key, item in value.items():
            if (clean := scrub_values(item)) is not item:
                changed = changed if changed is not None else dict(value)
                changed[key] = clean
        return value if changed is None else changed
    if isinstance(value, list):
        copied: list[Any] | None = None
        for i, item in enumerate(value):
            if (clean := scrub_values(item)) is not item:
                copied = copied if copied is not None else list(value)
                copied[i] = clean
        return value if copied is None else copied
    return value
