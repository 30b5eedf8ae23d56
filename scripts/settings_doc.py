"""Generate the settings tables of ``docs/deployment.md`` §2 from the services' settings classes.

Each row is one field: its environment name, its default and its ``Field(description=...)``, so the
class is the one place a setting is explained. The rest of deployment.md stays hand-written; the
tables sit between ``<!-- settings:NAME -->`` and ``<!-- /settings:NAME -->`` markers.

``python -m scripts.settings_doc`` rewrites them; ``--check`` exits 1 when they are out of date
(``tests/unit/test_settings_doc.py`` runs the check, so a setting changed without the doc fails CI).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode

from services.broker_api.settings import Settings as BrokerApiSettings
from services.github_linker.settings import Settings as GithubLinkerSettings
from services.kabanero_watcher.settings import Settings as WatcherSettings
from services.otc_writer.settings import Settings as OtcWriterSettings
from shared.settings import CommonSettings

DOC = Path(__file__).resolve().parent.parent / "docs" / "deployment.md"
SERVICES: dict[str, type[CommonSettings]] = {
    "broker-api": BrokerApiSettings,
    "kabanero-watcher": WatcherSettings,
    "otc-writer": OtcWriterSettings,
    "github-linker": GithubLinkerSettings,
}
TABLES: dict[str, type[BaseSettings]] = {"common": CommonSettings, **SERVICES}
DOC_DEFAULT = "doc_default"
"""``Field(json_schema_extra={"doc_default": ...})``: the default in words, when it is computed."""
HEADER = "| name | default | meaning |\n|---|---|---|"


class SettingsDocError(Exception):
    """A field without a description, or a table whose markers are missing."""


def env_name(name: str, field: FieldInfo) -> str:
    return str(field.validation_alias or name).upper()


def _value(value: Any, field: FieldInfo) -> str:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, int | float):
        return str(int(value)) if float(value).is_integer() else str(value)
    if isinstance(value, tuple | list) and any(m is NoDecode for m in field.metadata):
        return f"`{','.join(map(str, value))}`" if value else "empty"
    if isinstance(value, tuple | list | dict):
        return f"`{json.dumps(list(value) if isinstance(value, tuple) else value)}`"
    return f"`{value}`" if value != "" else "empty"


def default_of(field: FieldInfo) -> str:
    extra = field.json_schema_extra
    if isinstance(extra, dict) and isinstance(extra.get(DOC_DEFAULT), str):
        return str(extra[DOC_DEFAULT])
    if field.is_required():
        return "**required**"
    if field.default_factory is not None:
        return _value(field.default_factory(), field)  # type: ignore[call-arg]
    return _value(field.default, field)


def _common_default(name: str, field: FieldInfo) -> str:
    """A common setting's default; "svc N, ..." when the services set their own."""
    own = {svc: cls.model_fields[name] for svc, cls in SERVICES.items()}
    defaults = {svc: default_of(f) for svc, f in own.items()}
    if all(d == default_of(field) for d in defaults.values()):
        return default_of(field)
    return ", ".join(f"{svc} {d}" for svc, d in defaults.items())


def _row(name: str, default: str, field: FieldInfo, owner: str) -> str:
    if not field.description:
        raise SettingsDocError(f"{owner}.{name} has no Field(description=...)")
    meaning = field.description.replace("|", "\\|").replace("\n", " ")
    return f"| `{env_name(name, field)}` | {default} | {meaning} |"


def table(key: str) -> str:
    cls = TABLES[key]
    rows = [HEADER]
    if key == "common":
        rows += [_row(n, _common_default(n, f), f, cls.__name__) for n, f in cls.model_fields.items()]
    else:
        common = CommonSettings.model_fields
        for name, field in cls.model_fields.items():
            if name not in common:
                rows.append(_row(name, default_of(field), field, f"{cls.__module__}.{cls.__name__}"))
    return "\n".join(rows)


def _markers(key: str) -> re.Pattern[str]:
    return re.compile(
        rf"(<!-- settings:{re.escape(key)} -->\n)(.*?)(\n<!-- /settings:{re.escape(key)} -->)", re.S
    )


def render(text: str) -> str:
    """``text`` (deployment.md) with every generated table replaced."""
    for key in TABLES:
        match = _markers(key).search(text)
        if match is None:
            raise SettingsDocError(f"{DOC.name} has no <!-- settings:{key} --> ... <!-- /settings:{key} -->")
        text = text[: match.start(2)] + table(key) + text[match.end(2) :]
    return text


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m scripts.settings_doc", description=__doc__)
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the tables of docs/deployment.md are stale"
    )
    args = parser.parse_args()
    current = DOC.read_text()
    text = render(current)
    if args.check:
        if text != current:
            print(f"{DOC} §2 is out of date: run python -m scripts.settings_doc", file=sys.stderr)
            sys.exit(1)
        return
    DOC.write_text(text)
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
