"""OTC's rules for tools that both tool producers must follow (docs/reference/otc-api.md §5).

github-linker names GitHub tools and otc-writer names trigger tools; both hash a tool's content to
detect changes. One definition keeps the names valid for OTC and the hashes comparable.

Names are made safe to display (docs/design.md, "Tool names"): what is invisible or reorders text
(bidi and zero-width controls, other format characters, C0/C1 controls, line and paragraph
separators, unpaired surrogates, noncharacters) becomes ``-``, other Unicode spaces become `` ``,
and the text is NFC-normalised. OTC says "at most 128 characters" without saying what it counts, so
a name fits only when it has at most 128 code points, UTF-16 code units *and* UTF-8 bytes. Both are
pure functions of their input: an ambiguous create is resolved by looking the name up, so the same
input must give the same name for as long as the tool lives (the golden names in
tests/unit/test_tool_names.py pin them, also across Python's Unicode database versions).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from typing import Any

from shared.events import content_hash

TOOL_NAME_MAX = 128
TOOL_NAME_RE = re.compile(r"^([^\x00-\x7F]|[a-zA-Z0-9\-._ ])+$")

# Shown as nothing (or as blank) yet not format characters: combining grapheme joiner, Hangul fillers.
_INVISIBLE = frozenset("\u034f\u115f\u1160\u3164\uffa0")
# Unicode categories replaced: controls, format (bidi, zero-width, tags...), surrogates, line and
# paragraph separators. Listed bidi and zero-width characters are all Cf (tested explicitly).
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def _noncharacter(code: int) -> bool:
    return 0xFDD0 <= code <= 0xFDEF or (code & 0xFFFE) == 0xFFFE


def _display_char(c: str) -> str:
    if c.isascii():
        return c if c.isprintable() else "-"
    category = unicodedata.category(c)
    if category in _UNSAFE_CATEGORIES or c in _INVISIBLE or _noncharacter(ord(c)):
        return "-"
    return " " if category == "Zs" else c


def display_safe(text: str) -> str:
    """``text`` as it can be shown without spoofing: every invisible, reordering or control
    character is ``-``, every other space is `` ``, NFC-normalised."""
    if text.isascii() and text.isprintable():
        # The usual name or description: nothing to replace, and ASCII is NFC already. otc-writer
        # derives every trigger tool's name and description per change (~60 us a text char by char).
        return text
    return unicodedata.normalize("NFC", "".join(_display_char(c) for c in text))


# ASCII other than [A-Za-z0-9-._ ] -> "-"; str.translate leaves every other character as it is.
_REFUSED_ASCII = {code: "-" for code in range(128) if not (chr(code).isalnum() or chr(code) in "-._ ")}


def sanitize_tool_name(text: str) -> str:
    """:func:`display_safe`, then every character OTC refuses in a tool name (ASCII other than
    ``[A-Za-z0-9-._ ]``) replaced by ``-``. The length is :func:`fit_tool_name`'s business."""
    return display_safe(text).translate(_REFUSED_ASCII)


def tool_name_fits(name: str) -> bool:
    """At most :data:`TOOL_NAME_MAX` however OTC counts: code points, UTF-16 code units, UTF-8 bytes."""
    if name.isascii():  # one unit and one byte per character
        return len(name) <= TOOL_NAME_MAX
    utf16_units = len(name) + sum(1 for c in name if ord(c) > 0xFFFF)
    return max(len(name), utf16_units, len(name.encode("utf-8", "surrogatepass"))) <= TOOL_NAME_MAX


def fit_tool_name(base: str, suffix: str = "") -> str:
    """``"<base> <suffix>"`` (or ``base``), sanitized, with ``base`` cut at a character boundary
    until the whole fits :func:`tool_name_fits` (the suffix, a short hash, is kept whole)."""
    base = sanitize_tool_name(base).strip()
    tail = f" {sanitize_tool_name(suffix).strip()}" if suffix else ""
    budget = TOOL_NAME_MAX - len(tail.encode())
    # UTF-8 bytes are never fewer than UTF-16 units or code points: fitting them fits all three.
    # (A prefix of an NFC string is NFC: the cut needs no second normalisation.)
    name = base.encode()[:budget].decode("utf-8", "ignore").rstrip() + tail
    assert tool_name_fits(name), name
    return name


def tool_content_hash(tool_type_id: str, name: str, parameters: Mapping[str, Any]) -> str:
    """Stable hash of what a tool should look like: same content, same hash, whatever the key order."""
    return content_hash({"tool_type_id": tool_type_id, "name": name, "parameters": parameters})
