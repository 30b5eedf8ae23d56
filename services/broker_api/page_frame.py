"""The HTML document around every service page: script-less under the strict CSP of
``services.broker_api.dashboard.HEADERS`` (inline style only; no script, image, font or request to
anywhere), readable on a phone (viewport, wrapping tables), with a ``lang``, headings and text for
every state (colour is never the only signal). It refreshes itself without script (``<meta
http-equiv=refresh>``, not a fetch: the CSP allows it) and says when it was rendered."""

from __future__ import annotations

import html
from datetime import datetime

REFRESH_S = 30
STYLE = (
    "body{font-family:system-ui,sans-serif;margin:1em auto;max-width:60em;padding:0 1em;line-height:1.4}"
    "table{border-collapse:collapse;width:100%}th,td{text-align:left;vertical-align:top;padding:.3em;"
    "border-bottom:1px solid #ccc}td,h1,p,li{overflow-wrap:anywhere}td.st{overflow-wrap:normal}caption{text-align:left;font-weight:bold}"
    ".refused,.failed,.bad,.missing{color:#a00}.held,.pending{color:#7a4b00}.ok,.found,.applied,"
    ".created,.updated,.deleted{color:#060}footer{color:#555;font-size:.9em;margin-top:2em}"
)


def frame(title: str, body: str, rendered_at: datetime) -> str:
    """A whole page: ``title`` as its title, ``body`` (HTML) as its content."""
    e = html.escape
    at = rendered_at.isoformat(timespec="seconds")
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width, initial-scale=1'>"
        f"<meta http-equiv=refresh content={REFRESH_S}>"
        f"<title>{e(title)}</title><style>{STYLE}</style></head><body><main>{body}</main>"
        f"<footer><p>Rendered at <time datetime='{e(at)}'>{e(at)}</time>; "
        f"this page refreshes itself every {REFRESH_S} seconds.</p></footer></body></html>"
    )
