"""Tool names both producers send to OTC: safe to display, within 128 however OTC counts, and the
same name for the same input forever (an ambiguous create is resolved by looking the name up)."""

from __future__ import annotations

import unicodedata

import pytest

from services.github_linker import naming
from services.otc_writer.desired import TriggerToolStyle, desired_trigger_tool, trigger_tool_name
from shared.events import InstanceRef, TriggerData, TriggerKey
from shared.otc_tools import (
    TOOL_NAME_MAX,
    TOOL_NAME_RE,
    display_safe,
    fit_tool_name,
    sanitize_tool_name,
    tool_name_fits,
)

GITHUB = ("github.com",)

BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"
ZERO_WIDTH = "\u200b\u200c\u200d\u2060\ufeff"
C0_C1 = "".join(map(chr, [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)]))
OTHER_FORMAT = "\u00ad\u180e\u2064\ufff9\U000e0001\U000e0041"  # soft hyphen, tags, ...
NONCHARACTERS = "\ufdd0\ufdef\ufffe\uffff\U0001fffe\U0010ffff"
UNSAFE = BIDI + ZERO_WIDTH + C0_C1 + OTHER_FORMAT + NONCHARACTERS + "\ud800\udfff\u2028\u2029"


def _key(name: str, owner: str = "webhook") -> TriggerKey:
    return TriggerKey(cluster="default", namespace="kabanero", generation="mediation", owner=owner, name=name)


def _sizes(name: str) -> tuple[int, int, int]:
    """(code points, UTF-16 code units, UTF-8 bytes)."""
    return (
        len(name),
        len(name.encode("utf-16-le", "surrogatepass")) // 2,
        len(name.encode("utf-8", "surrogatepass")),
    )


def _names(text: str) -> list[str]:
    names = [trigger_tool_name(_key(text)), trigger_tool_name(_key("m", owner=text))]
    if not any(0xD800 <= ord(c) <= 0xDFFF for c in text):  # a message's JSON cannot carry one
        names.append(naming.tool_name(f"https://github.com/org/{text}", github_hosts=GITHUB))
    return names


@pytest.mark.parametrize("char", list(UNSAFE), ids=lambda c: f"U+{ord(c):04X}")
def test_no_invisible_reordering_or_control_character_reaches_a_name(char: str) -> None:
    for name in _names(f"evil{char}gnp.exe"):
        assert char not in name
        assert unicodedata.category(char) not in {unicodedata.category(c) for c in name if not c.isascii()}
        assert TOOL_NAME_RE.match(name), name


def test_spoofing_names_are_visible_and_distinct() -> None:
    plain = trigger_tool_name(_key("evilexe.png"))
    spoof = trigger_tool_name(_key("evil\u202egnp.exe"))  # displays as "evilexe.png"
    assert spoof.startswith("kabanero-trigger kabanero webhook evil-gnp.exe ")
    assert spoof != plain
    assert display_safe("admin\u200b") == "admin-" != display_safe("admin")


def test_other_spaces_read_as_spaces_and_text_is_nfc() -> None:
    assert display_safe("a\u00a0b\u3000c") == "a b c"
    assert display_safe("e\u0301") == "\u00e9"  # decomposed and composed spellings: one name
    decomposed, composed = (trigger_tool_name(_key(n)) for n in ("caf\u0065\u0301", "caf\u00e9"))
    assert decomposed.rsplit(" ", 1)[0] == composed.rsplit(" ", 1)[0]  # the hash suffix is the key's
    assert display_safe("ok ünïcødé 😀") == "ok ünïcødé 😀"  # visible text is kept


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("\U0001f600" * 300, id="astral"),
        pytest.param("\u4e2d" * 300, id="cjk"),
        pytest.param("é" * 300, id="latin-1"),
        pytest.param("a" * 300, id="ascii"),
        pytest.param("a" * 90 + "\U0001f600" * 50, id="mixed"),
    ],
)
def test_every_name_fits_128_however_counted(text: str) -> None:
    for name in _names(text):
        assert max(_sizes(name)) <= TOOL_NAME_MAX, (name, _sizes(name))
        assert TOOL_NAME_RE.match(name)
        assert name.rsplit(" ", 1)[1].isalnum()  # the hash suffix is never cut


def test_names_differing_only_past_the_cut_stay_distinct() -> None:
    a, b = ("\U0001f600" * 300 + "a", "\U0001f600" * 300 + "b")
    assert trigger_tool_name(_key(a)) != trigger_tool_name(_key(b))
    assert naming.tool_name(f"https://github.com/o/{a}", github_hosts=GITHUB) != naming.tool_name(
        f"https://github.com/o/{b}", github_hosts=GITHUB
    )


def test_fit_never_splits_a_character() -> None:
    for n in range(100, 140):
        name = fit_tool_name("\U0001f600" * n, "0123abcd")
        assert name.endswith(" 0123abcd") and "\ufffd" not in name
        assert _sizes(name)[2] <= TOOL_NAME_MAX
    assert sanitize_tool_name(sanitize_tool_name("a/b\u202e")) == sanitize_tool_name("a/b\u202e")


# Golden names: these exact strings are what OTC holds. A change here (a new rule, or a new
# Unicode database in a Python upgrade) renames tools: decide it, do not just update the list.
GOLDEN = [
    (_key("m1"), "kabanero-trigger kabanero webhook m1 538a6498"),
    (_key("evil\u202egnp.exe"), "kabanero-trigger kabanero webhook evil-gnp.exe acac0d40"),
    (_key("a\u200bb\u2066c\u2069"), "kabanero-trigger kabanero webhook a-b-c- a8543c01"),
    (_key("c1\x85\x9b"), "kabanero-trigger kabanero webhook c1-- 8f9281ce"),
    (_key("nul\x00x"), "kabanero-trigger kabanero webhook nul-x f69539ff"),
    (_key("ok ünïcødé"), "kabanero-trigger kabanero webhook ok ünïcødé f203425a"),
    (_key("\U0001f600" * 300), "kabanero-trigger kabanero webhook " + "\U0001f600" * 21 + " d0ba5240"),
]


@pytest.mark.parametrize(("key", "name"), GOLDEN, ids=[str(i) for i in range(len(GOLDEN))])
def test_names_are_the_same_forever(key: TriggerKey, name: str) -> None:
    assert trigger_tool_name(key) == name


def test_description_is_safe_to_display() -> None:
    trigger = TriggerData(
        key=_key("evil\u202egnp\u200b"),
        instance=InstanceRef(cluster="default", namespace="kabanero"),
        content_hash="h",
        revision=1,
    )
    description = desired_trigger_tool(trigger, "tc", TriggerToolStyle()).parameters["description"]
    assert "\u202e" not in description and "\u200b" not in description
    assert "webhook/evil-gnp-" in description


@pytest.mark.parametrize("code", range(128))
def test_every_ascii_character_follows_the_rule_on_the_fast_path(code: int) -> None:
    """ASCII text skips the character-by-character pass (otc-writer names every trigger tool per
    change); it must give what that pass gives: printable kept, controls ``-``, then only
    ``[A-Za-z0-9-._ ]`` kept in a name."""
    c = chr(code)
    shown = c if c.isprintable() else "-"
    assert display_safe(f"a{c}b") == f"a{shown}b"
    allowed = c.isalnum() or c in "-._ "
    assert sanitize_tool_name(f"a{c}b") == f"a{c if allowed else '-'}b"


@pytest.mark.parametrize("length", [TOOL_NAME_MAX - 1, TOOL_NAME_MAX, TOOL_NAME_MAX + 1])
def test_an_ascii_name_fits_by_its_length(length: int) -> None:
    assert tool_name_fits("a" * length) == (max(_sizes("a" * length)) <= TOOL_NAME_MAX)
    assert tool_name_fits("a" * (length - 1) + "é") == (
        max(_sizes("a" * (length - 1) + "é")) <= TOOL_NAME_MAX
    )
