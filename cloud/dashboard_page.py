"""The fleet dashboard: one self-contained HTML document served at ``GET /fleet``.

No external assets. The fleet id and operator token come in the URL fragment
(``#fleet=<id>&token=<token>``, never sent to the server), are kept in sessionStorage and
wiped from the address bar; without them a small form asks. The page reads the live
stream ``GET /v1/fleets/{id}/events`` with fetch() (EventSource cannot send a bearer
token), reconnecting with backoff, and calls the refresh and bulk-renewal routes.

Two languages, zh-CN (the default) and en, toggled in the header and remembered in
sessionStorage: every visible text comes from the script's ``UI`` table (the document's
own elements name their text by ``data-t``); an unknown status, alert kind or outcome from
the API shows the table's generic word, never the raw key. Dates and times are China time
(UTC+8) whatever the browser's zone.
``headers()`` carries a CSP that allows exactly its one inline style and script by SHA-256.

The document, style and script are ``cloud/assets/dashboard.{html,css,js}``, read once
(on the first request) and put together inline.
"""

import base64
import functools
import hashlib
from importlib import resources


@functools.cache
def _assets() -> tuple[str, str, str]:
    """The document, style and script (read once)."""
    folder = resources.files(__package__) / "assets"
    document, style, script = (
        (folder / f"dashboard.{ext}").read_text(encoding="utf-8") for ext in ("html", "css", "js")
    )
    return document, style, script


@functools.cache
def page() -> str:
    """The whole document."""
    document, style, script = _assets()
    return document.replace("@STYLE@", style).replace("@SCRIPT@", script)


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


@functools.cache
def content_security_policy() -> str:
    """The page's CSP: its own inline style and script only; fetch to its own origin."""
    _, style, script = _assets()
    return "; ".join(
        (
            "default-src 'none'",
            f"script-src {_sha256(script)}",
            f"style-src {_sha256(style)}",
            "connect-src 'self'",
            "img-src data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    )


def headers() -> dict[str, str]:
    """The response headers the page is served with."""
    return {
        "Content-Security-Policy": content_security_policy(),
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
    }
