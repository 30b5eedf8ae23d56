"""OTC's validation rules (docs/reference/otc-api.md §5, §8): names, ids, required parameters per tool type.

Every failure raises :class:`ApiError` 400 with a message in IBM's style, before anything is stored.
"""

from __future__ import annotations

import copy
import re
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from emulators.otc.errors import ApiError

NAME_RE = re.compile(r"^([^\x00-\x7F]|[a-zA-Z0-9-._ ])+$")
NAME_MAX = 128
DESCRIPTION_MAX = 500
RESOURCE_GROUP_RE = re.compile(r"^[0-9a-f]{32}$")

GITHUB_TYPES = ("new", "clone", "fork", "link")
LIFECYCLE_PHASES = ("THINK", "CODE", "DELIVER", "RUN", "MANAGE", "LEARN", "CULTURE")

TOOL_TYPE_IDS = frozenset(
    {
        "appconfig",
        "artifactory",
        "bitbucketgit",
        "cloudobjectstorage",
        "customtool",
        "draservicebroker",
        "eventnotifications",
        "githubconsolidated",
        "github_integrated",
        "gitlab",
        "hashicorpvault",
        "hostedgit",
        "jenkins",
        "jira",
        "keyprotect",
        "nexus",
        "pagerduty",
        "pipeline",
        "private_worker",
        "saucelabs",
        "secretsmanager",
        "slack",
        "sonarqube",
    }
)


def bad(message: str, code: str = "bad_request") -> ApiError:
    return ApiError(400, message, code=code)


def check_name(value: object, field: str = "name") -> str:
    if not isinstance(value, str) or not value:
        raise bad(f"'{field}' must be a non-empty string")
    if len(value) > NAME_MAX:
        raise bad(f"'{field}' must be at most {NAME_MAX} characters")
    if not NAME_RE.match(value):
        raise bad(f"'{field}' must match the pattern ^([^\\x00-\\x7F]|[a-zA-Z0-9-._ ])+$")
    return value


def check_description(value: object) -> str:
    if not isinstance(value, str):
        raise bad("'description' must be a string")
    if len(value) > DESCRIPTION_MAX:
        raise bad(f"'description' must be at most {DESCRIPTION_MAX} characters")
    return value


def check_resource_group_id(value: object) -> str:
    if not isinstance(value, str) or not RESOURCE_GROUP_RE.match(value):
        raise bad("'resource_group_id' must be 32 lowercase hexadecimal characters")
    return value


def canonical_uuid(value: str, what: str) -> str:
    """A path id must be a UUID; OTC's ids are UUIDv4 (seeded ids may be any UUID)."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise bad(f"'{what}' must be a UUID") from None


# --- tool parameters ------------------------------------------------------------------------------


def _require(params: Mapping[str, Any], tool_type: str, *keys: str) -> None:
    missing = [k for k in keys if params.get(k) in (None, "")]
    if missing:
        raise bad(
            f"Missing required parameter(s) for tool type '{tool_type}': {', '.join(missing)}",
            code="missing_parameter",
        )


def _check_url(params: Mapping[str, Any], key: str) -> None:
    value = params.get(key)
    if value is not None and (not isinstance(value, str) or not re.match(r"^https?://[^\s/]+", value)):
        raise bad(f"Parameter '{key}' must be an http(s) URL", code="invalid_parameter")


def _git(tool_type: str, default_git_id: str) -> Callable[[dict[str, Any], bool], None]:
    def rules(params: dict[str, Any], create: bool) -> None:
        _require(params, tool_type, "type")
        if params["type"] not in GITHUB_TYPES:
            raise bad(f"Parameter 'type' must be one of {', '.join(GITHUB_TYPES)}", code="invalid_parameter")
        if params["type"] == "link":
            _require(params, tool_type, "repo_url")
        else:
            _require(params, tool_type, "repo_name", "owner_id")
        if params["type"] in ("clone", "fork"):
            _require(params, tool_type, "source_repo_url")
        for key in ("repo_url", "source_repo_url", "api_root_url", "root_url"):
            _check_url(params, key)
        if create:
            params.setdefault("git_id", default_git_id)
            params.setdefault("has_issues", True)

    return rules


def _customtool(params: dict[str, Any], create: bool) -> None:
    _require(params, "customtool", "type", "lifecyclePhase", "name", "dashboard_url")
    if params["lifecyclePhase"] not in LIFECYCLE_PHASES:
        raise bad(
            f"Parameter 'lifecyclePhase' must be one of {', '.join(LIFECYCLE_PHASES)}",
            code="invalid_parameter",
        )
    _check_url(params, "dashboard_url")


def _pipeline(params: dict[str, Any], create: bool) -> None:
    if params.get("type", "tekton") not in ("tekton", "classic"):
        raise bad("Parameter 'type' must be one of tekton, classic", code="invalid_parameter")


def _slack(params: dict[str, Any], create: bool) -> None:
    _require(params, "slack", "api_token", "channel_name")


_RULES: dict[str, Callable[[dict[str, Any], bool], None]] = {
    "githubconsolidated": _git("githubconsolidated", "github"),
    "hostedgit": _git("hostedgit", "hostedgit"),
    "customtool": _customtool,
    "pipeline": _pipeline,
    "slack": _slack,
}

IMMUTABLE_PARAMETERS: dict[str, tuple[str, ...]] = {
    "githubconsolidated": ("type",),
    "hostedgit": ("type",),
}


def check_tool_type(tool_type_id: str) -> None:
    if tool_type_id not in TOOL_TYPE_IDS:
        raise bad(f"Unknown tool_type_id '{tool_type_id}'", code="invalid_tool_type")


def normalize_parameters(tool_type_id: str, params: dict[str, Any], *, create: bool) -> dict[str, Any]:
    """Validate, and on create fill OTC's defaults; returns a new dict (the input is not changed).

    Defaults are not re-applied on PATCH, so a ``null`` in a merge-patch really removes the key.
    """
    result = copy.deepcopy(params)
    rules = _RULES.get(tool_type_id)
    if rules is not None:
        rules(result, create)
    return result


def check_immutable(tool_type_id: str, before: Mapping[str, Any], after: Mapping[str, Any]) -> None:
    for key in IMMUTABLE_PARAMETERS.get(tool_type_id, ()):
        if before.get(key) != after.get(key):
            raise bad(f"Parameter '{key}' cannot be changed after the tool is created", code="immutable")
