"""OTC's rules for tools that both tool producers must follow (otc-api.md §4.4).

github-linker names GitHub tools and otc-writer names trigger tools; both hash a tool's content to
detect changes. One definition keeps the names valid for OTC and the hashes comparable.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from shared.events import content_hash

TOOL_NAME_MAX = 128
TOOL_NAME_RE = re.compile(r"^([^\x00-\x7F]|[a-zA-Z0-9\-._ ])+$")


def sanitize_tool_name(text: str) -> str:
    """Replace every character OTC refuses in a tool name (ASCII other than ``[A-Za-z0-9-._ ]``) by ``-``."""
    return "".join(c if not c.isascii() or c.isalnum() or c in "-._ " else "-" for c in text)


def tool_content_hash(tool_type_id: str, name: str, parameters: Mapping[str, Any]) -> str:
    """Stable hash of what a tool should look like: same content, same hash, whatever the key order."""
    return content_hash({"tool_type_id": tool_type_id, "name": name, "parameters": parameters})
