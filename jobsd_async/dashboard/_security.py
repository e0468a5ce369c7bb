"""Who may see and do what on the dashboard, and the CSRF check every action passes.

- **Access** comes from the host app's ``authorize(request)`` hook (``"admin"``/``True``:
  everything, ``"read"``: pages only, ``None``/``False``: 403), from HTTP basic auth for the
  standalone server, and is capped by ``read_only``.
- **CSRF**: actions are POSTs carrying the token of a cookie set on the pages
  (double-submit, compared in constant time), and a browser's ``Origin``, when it sends
  one, must be the dashboard's own.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import inspect
import secrets
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Literal, TypeAlias
from urllib.parse import urlsplit

from starlette.requests import Request

CSRF_COOKIE = "jobsd_csrf"
CSRF_FIELD = "csrf"

Grant: TypeAlias = bool | Literal["admin", "read"] | None
Authorize: TypeAlias = Callable[[Request], Grant | Awaitable[Grant]]
"""The host app's hook: given the request, what its user may do (see :class:`Access`)."""


class Access(Enum):
    NONE = "none"
    READ = "read"
    ADMIN = "admin"


async def access_of(
    request: Request, *, authorize: Authorize | None, basic_auth: tuple[str, str] | None, read_only: bool
) -> Access:
    """What this request may do."""
    access = Access.ADMIN
    if basic_auth is not None and not _basic_auth_ok(request, basic_auth):
        return Access.NONE
    if authorize is not None:
        grant = authorize(request)
        if inspect.isawaitable(grant):
            grant = await grant
        if grant is True or grant == "admin":
            access = Access.ADMIN
        elif grant == "read":
            access = Access.READ
        else:
            return Access.NONE
    if read_only and access is Access.ADMIN:
        access = Access.READ
    return access


def _basic_auth_ok(request: Request, expected: tuple[str, str]) -> bool:
    header = request.headers.get("authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        user, _, password = base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    return hmac.compare_digest(user.encode(), expected[0].encode()) & hmac.compare_digest(
        password.encode(), expected[1].encode()
    )


def parse_basic_auth(value: str) -> tuple[str, str]:
    """``USER:PASSWORD`` (the standalone server's setting)."""
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ValueError("basic auth must be given as USER:PASSWORD, both non-empty")
    return user, password


def csrf_token(request: Request) -> tuple[str, bool]:
    """The request's CSRF token, and whether it is new (then the response sets the cookie)."""
    token = request.cookies.get(CSRF_COOKIE, "")
    if len(token) == 43 and token.replace("-", "").replace("_", "").isalnum():
        return token, False
    return secrets.token_urlsafe(32), True


def csrf_ok(request: Request, submitted: str | None) -> bool:
    """Whether a POST carries the cookie's token and comes from the dashboard's own origin."""
    cookie = request.cookies.get(CSRF_COOKIE)
    if not cookie or not submitted or not hmac.compare_digest(cookie.encode(), submitted.encode()):
        return False
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.headers.get("host", "")
