"""The web dashboard of a jobsd cluster: an ASGI application to mount in your app.

    from jobsd_async.dashboard import create_dashboard

    app.mount("/jobs", create_dashboard(jd))               # FastAPI / Starlette

Needs the ``dashboard`` extra (Starlette, Jinja2; uvicorn for ``jobsd dashboard``).
See docs/dashboard.md.
"""

from ._app import create_dashboard
from ._security import Authorize, parse_basic_auth

__all__ = ("Authorize", "create_dashboard", "parse_basic_auth")
