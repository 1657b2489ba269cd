"""The server's front door: who may call it, from which page, under which host name.

Three ASGI layers around the app (outermost first):

- :class:`SecurityHeaders` puts ``X-Frame-Options: DENY``, ``frame-ancestors 'none'`` (merged
  into any CSP the response has), ``X-Content-Type-Options: nosniff`` and
  ``Referrer-Policy: no-referrer`` on every response, and ``Cache-Control: no-store`` on every
  ``/v1/*`` answer (results must not linger in browser or proxy caches).
- Starlette's ``TrustedHostMiddleware`` answers 400 to a ``Host`` header outside the allow-list
  (loopback names by default): a DNS-rebinding page served from ``attacker.example`` that
  resolves to 127.0.0.1 is refused.
- :class:`FrontDoor` refuses cross-site writes (403: ``Sec-Fetch-Site`` other than
  ``same-origin``/``none``, or an ``Origin`` that is not this host) and, when the server has a
  token, every ``/v1/*`` call without ``Authorization: Bearer <token>`` (401 with
  ``WWW-Authenticate``; compared in constant time). Both happen before the body is read.

The page (``/``), the OpenAPI description and ``/docs`` stay open: they hold no data, and the
page asks for the token itself.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

from fastapi import FastAPI
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
WILDCARD_BINDS = {"0.0.0.0", "::", ""}  # listening on every interface: no one name
PROTECTED_PREFIX = "/v1/"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
SAME_SITE_FETCH = {"same-origin", "none"}  # "none": typed in the address bar, a bookmark


def allowed_hosts(bound_host: str, extra: Iterable[str] = ()) -> list[str]:
    """Loopback names, the host the server is bound to (unless a wildcard) and ``extra``."""
    hosts = [*LOOPBACK_HOSTS]
    bound = bound_host.strip().lower().strip("[]")
    names = [] if bound in WILDCARD_BINDS else [f"[{bound}]" if ":" in bound else bound]
    for name in [*names, *(n.strip().lower() for n in extra)]:
        if name and name not in hosts:
            hosts.append(name)
    return hosts


def _json(status: int, detail: str, headers: dict[str, str] | None = None) -> tuple[dict, bytes]:
    body = json.dumps({"detail": detail}).encode()
    head = {"content-type": "application/json", "content-length": str(len(body)), **(headers or {})}
    return head, body


async def _answer(send: Send, status: int, detail: str, headers: dict | None = None) -> None:
    head, body = _json(status, detail, headers)
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in head.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class FrontDoor:
    """Cross-site writes -> 403; ``/v1/*`` without the bearer token (when one is set) -> 401."""

    def __init__(self, app: ASGIApp, token: str | None = None) -> None:
        self.app = app
        self.token = token.encode("utf-8") if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if scope["method"] not in SAFE_METHODS:
            why = cross_site(headers)
            if why:
                await _answer(send, 403, f"cross-site request refused ({why})")
                return
        if self.token is not None and scope["path"].startswith(PROTECTED_PREFIX):
            given = _bearer(headers.get("authorization", ""))
            if given is None:
                await _answer(
                    send,
                    401,
                    "this server needs a token: send the header 'Authorization: Bearer <token>'",
                    {"www-authenticate": 'Bearer realm="cxrguide"'},
                )
                return
            if not hmac.compare_digest(given, self.token):
                await _answer(
                    send,
                    401,
                    "wrong token",
                    {"www-authenticate": 'Bearer realm="cxrguide", error="invalid_token"'},
                )
                return
        await self.app(scope, receive, send)


def _bearer(value: str) -> bytes | None:
    scheme, _, credential = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        return None
    return credential.strip().encode("utf-8")


def cross_site(headers: Headers) -> str | None:
    """Why a state-changing request comes from another site's page, or None.

    Browsers send ``Sec-Fetch-Site`` and ``Origin`` on cross-site POSTs; non-browser clients
    (curl, scripts) send neither and pass. Ports count: another local service's page on
    ``localhost:3000`` is a different origin from ``localhost:8000``.
    """
    site = headers.get("sec-fetch-site")
    if site is not None and site.lower() not in SAME_SITE_FETCH:
        return f"Sec-Fetch-Site: {site}"
    origin = headers.get("origin")
    if origin is not None:
        netloc = urlsplit(origin).netloc.lower() if origin != "null" else ""
        if not netloc or netloc != headers.get("host", "").lower():
            return f"Origin: {origin}"
    return None


def _merge_csp(policy: str | None) -> str:
    if not policy:
        return "frame-ancestors 'none'"
    if "frame-ancestors" in policy:
        return policy
    return policy.rstrip("; ") + "; frame-ancestors 'none'"


class SecurityHeaders:
    """The same protective headers on every response, the app's, a 400, 401 or 403 alike."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        results = scope["path"].startswith(PROTECTED_PREFIX)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                head = MutableHeaders(scope=message)
                head["X-Frame-Options"] = "DENY"
                head["Content-Security-Policy"] = _merge_csp(head.get("content-security-policy"))
                head["X-Content-Type-Options"] = "nosniff"
                head.setdefault("Referrer-Policy", "no-referrer")
                if results:
                    head["Cache-Control"] = "no-store"
                if "server" in head:
                    del head["server"]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def guard(app: FastAPI, *, token: str | None, hosts: Sequence[str]) -> None:
    """Wrap ``app`` in the front door (the last middleware added is the outermost)."""
    app.add_middleware(FrontDoor, token=token)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(hosts), www_redirect=False)
    app.add_middleware(SecurityHeaders)
    if token:
        _declare_bearer(app)


def _declare_bearer(app: FastAPI) -> None:
    """OpenAPI: ``/v1/*`` needs a bearer token (so /docs offers 'Authorize')."""
    plain = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            spec = plain()
            spec.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
                "type": "http",
                "scheme": "bearer",
            }
            for path, ops in spec.get("paths", {}).items():
                if path.startswith(PROTECTED_PREFIX):
                    for op in ops.values():
                        op["security"] = [{"bearer": []}]
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
