"""The dashboard's routes: pages, actions and the live feed, over an :class:`Admin`."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode

import jinja2
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from .._admin import RETRYABLE, Admin
from .._config import DEFAULT_TABLE_PREFIX, MAX_NAME_LENGTH, check_name
from .._errors import JobsDError, RunNotFoundError
from .._jobsd import JobsD
from .._runs import RunState, RunStatus
from .._store._browse import RunFilter
from .._text import is_storable
from ._live import ChangeFeed
from ._security import CSRF_COOKIE, CSRF_FIELD, Access, Authorize, access_of, csrf_ok, csrf_token

_HERE = Path(__file__).parent
PAGE_SIZE = 50
BULK_LIMIT = 500  # runs one bulk action changes at most
BULK_STATUSES = {
    "cancel": [RunStatus.PENDING, RunStatus.RUNNING],
    "retry": [RunStatus.FAILED, RunStatus.TIMED_OUT],
}
MAX_FORM = 1_000_000  # bytes of a form
MAX_ID = 2**63 - 1  # the largest id a BIGINT column holds
PARTIAL_HEADER = "X-Jobsd-Partial"  # asks for a page's main part only (live refreshes)
FLASH_COOKIE = "jobsd_flash"  # the message an action leaves for the page it redirects to
_KEEPALIVE = 15.0  # seconds between comments on a quiet event stream
_STREAM_LIFETIME = 300.0  # seconds an event stream lasts before the browser reconnects
_log = logging.getLogger("jobsd_async.dashboard")


@dataclass(frozen=True)
class Settings:
    admin: Admin
    jobsd: JobsD | None
    read_only: bool
    authorize: Authorize | None
    basic_auth: tuple[str, str] | None
    title: str


def create_dashboard(
    source: AsyncEngine | JobsD,
    *,
    table_prefix: str | None = None,
    read_only: bool = False,
    authorize: Authorize | None = None,
    basic_auth: tuple[str, str] | None = None,
    title: str = "jobsd",
    live_interval: float = 1.0,
) -> Starlette:
    """The dashboard of the cluster on ``source``'s database, as an ASGI application.

    ``source`` is a :class:`JobsD` (its engine and table prefix; the dashboard can then
    enqueue its registered jobs, validated as ``create_run`` validates them) or an
    ``AsyncEngine`` (with ``table_prefix``).  ``read_only`` hides and refuses every action.
    ``authorize(request)`` is the host app's hook: it returns ``"admin"`` (or True) for full
    access, ``"read"`` for pages only, and None/False to refuse (403).  ``basic_auth``
    (user, password) protects the standalone server.  Mount it under any path, e.g.
    ``app.mount("/jobs", create_dashboard(jd))``.
    """
    if isinstance(source, JobsD):
        engine, prefix, jobsd = source.engine, table_prefix or source._config.table_prefix, source
    elif isinstance(source, AsyncEngine):
        engine, prefix, jobsd = source, table_prefix or DEFAULT_TABLE_PREFIX, None
    else:
        raise TypeError(f"source must be a JobsD or an AsyncEngine, got {source!r}")
    if authorize is not None and not callable(authorize):
        raise TypeError(f"authorize must be callable, got {authorize!r}")
    if not live_interval > 0 or math.isinf(live_interval):
        raise ValueError(f"live_interval must be a positive number of seconds, got {live_interval!r}")
    admin = Admin(engine, table_prefix=prefix)
    settings = Settings(admin, jobsd, read_only, authorize, basic_auth, title)
    return _build(settings, ChangeFeed(admin, interval=live_interval))


def _build(settings: Settings, feed: ChangeFeed) -> Starlette:
    # Everything user-supplied (names, arguments, results, errors) is escaped, always.
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(_HERE / "templates"), autoescape=True)
    templates = Jinja2Templates(env=env)
    env.globals["RunStatus"] = RunStatus
    env.filters["when"] = _when
    env.filters["ago"] = _ago
    env.filters["seconds"] = _seconds
    env.filters["pretty"] = _pretty

    Handler = Callable[[Request, Access], Awaitable[Response]]

    def page(handler: Handler, *, admin_only: bool = False) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            access = await access_of(
                request,
                authorize=settings.authorize,
                basic_auth=settings.basic_auth,
                read_only=settings.read_only,
            )
            if access is Access.NONE:
                headers = {"WWW-Authenticate": 'Basic realm="jobsd"'} if settings.basic_auth else None
                status = 401 if settings.basic_auth else 403
                return Response("not allowed", status_code=status, headers=headers)
            if request.method == "POST":
                if access is not Access.ADMIN:
                    return Response("this dashboard is read-only for you", status_code=403)
                try:
                    form = await _form(request)
                except _TooLarge:
                    return Response("the form is too large", status_code=413)
                if not csrf_ok(request, form.get(CSRF_FIELD)):
                    return Response("missing or wrong CSRF token; reload the page", status_code=403)
                request.state.form = form
            try:
                return await handler(request, access)
            except RunNotFoundError as exc:
                return render(request, access, "message.html", {"message": str(exc)}, status=404)
            except JobsDError as exc:
                _log.warning("jobsd dashboard: %s %s: %s", request.method, request.url.path, exc)
                message = "the database could not answer; the details are in the server's log"
                return render(request, access, "message.html", {"message": message}, status=503)

        return endpoint

    def render(
        request: Request, access: Access, name: str, context: dict[str, Any], *, status: int = 200
    ) -> Response:
        token, new = csrf_token(request)
        base = request.scope.get("root_path", "").rstrip("/")
        response: Response = templates.TemplateResponse(
            request,
            name,
            {
                **context,
                "title": settings.title,
                "base": base,
                "admin": access is Access.ADMIN,
                "csrf_field": CSRF_FIELD,
                "csrf": token,
                "partial": request.headers.get(PARTIAL_HEADER) == "1",
                "message": context.get("message") or _flashed(request),
                "can_enqueue": settings.jobsd is not None and settings.jobsd.is_running,
            },
            status_code=status,
        )
        if new:
            response.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="strict", path=base or "/")
        if FLASH_COOKIE in request.cookies:
            response.delete_cookie(FLASH_COOKIE, path=base or "/")
        # A page and its live-refreshed part share a URL: neither may be served from a cache.
        response.headers["Cache-Control"] = "no-store"
        response.headers["Vary"] = PARTIAL_HEADER
        return response

    def back(request: Request, path: str, message: str) -> Response:
        """Redirect to a page of the dashboard, which shows ``message`` once."""
        base = request.scope.get("root_path", "").rstrip("/")
        response = RedirectResponse(f"{base}{path}", status_code=303)
        response.set_cookie(
            FLASH_COOKIE, quote(message[:300]), max_age=60, httponly=True, samesite="strict", path=base or "/"
        )
        return response

    admin = settings.admin

    # ------------------------------------------------------------------ pages

    async def overview(request: Request, access: Access) -> Response:
        backlog = await admin.backlog()
        activity = await admin.activity(timedelta(hours=1))
        instances = await admin.instances(include_gone=True)
        live = [i for i in instances if i.alive]
        jobs = sorted(set(backlog) | set(activity.by_job))
        most = max((count for _, count, _ in activity.per_minute), default=0)
        return render(
            request,
            access,
            "overview.html",
            {
                "backlog": backlog,
                "activity": activity,
                "jobs": jobs,
                "live": live,
                "dead": len(instances) - len(live),
                "most": most,
                "pending": sum(b.pending for b in backlog.values()),
                "running": sum(b.running for b in backlog.values()),
                "oldest_due": max((b.oldest_due_age for b in backlog.values()), default=0.0),
            },
        )

    async def runs(request: Request, access: Access) -> Response:
        filters, problems = _filters(request.query_params)
        states = [] if problems else await admin.list_runs(filters, limit=PAGE_SIZE + 1)
        more = len(states) > PAGE_SIZE
        states = states[:PAGE_SIZE]
        query = {k: v for k, v in request.query_params.items() if k != "before" and v}
        older = urlencode({**query, "before": states[-1].run_id}) if more and states else None
        return render(
            request,
            access,
            "runs.html",
            {
                "states": states,
                "query": query,
                "older": older,
                "problems": problems,
                "statuses": [s.value for s in RunStatus],
                "bulk_limit": BULK_LIMIT,
            },
            status=400 if problems else 200,
        )

    async def run(request: Request, access: Access) -> Response:
        run_id = _run_id(request.path_params["run_id"])
        chain = await admin.chain(run_id)
        state = chain.state
        return render(
            request,
            access,
            "run.html",
            {
                "state": state,
                "rows": chain.rows,
                "trace_id": _trace_id(chain.rows[-1].trace_context),
                "result": _pretty(state.result),
                "cancellable": state.status in (RunStatus.PENDING, RunStatus.RUNNING),
                "retryable": state.status in RETRYABLE,
                "can_run_now": state.status is RunStatus.PENDING,
            },
        )

    async def instances(request: Request, access: Access) -> Response:
        include_gone = request.query_params.get("all") == "1"
        records = await admin.instances(include_gone=include_gone)
        running = await admin.list_runs(RunFilter(status=RunStatus.RUNNING), limit=1000)
        by_owner: dict[int, list[RunState]] = {}
        for state in running:
            if state.run_started_by is not None:
                by_owner.setdefault(state.run_started_by, []).append(state)
        return render(
            request,
            access,
            "instances.html",
            {"records": records, "by_owner": by_owner, "include_gone": include_gone},
        )

    async def queues(request: Request, access: Access) -> Response:
        return render(
            request,
            access,
            "queues.html",
            {"queues": await admin.queues(), "limits": await admin.limits()},
        )

    async def schedules(request: Request, access: Access) -> Response:
        chains = [
            state
            for status in (RunStatus.RUNNING, RunStatus.PENDING)
            for state in await admin.list_runs(RunFilter(status=status, scheduled=True), limit=200)
        ]
        return render(
            request,
            access,
            "schedules.html",
            {"chains": chains, "upcoming": await admin.upcoming(limit=PAGE_SIZE)},
        )

    async def enqueue_form(request: Request, access: Access) -> Response:
        return render(request, access, "enqueue.html", _enqueue_context(settings, {}))

    # ------------------------------------------------------------------ actions

    async def act_on_run(request: Request, access: Access) -> Response:
        run_id = _run_id(request.path_params["run_id"])
        action = request.path_params["action"]
        where = f"/runs/{run_id}"
        if action == "cancel":
            done = await admin.cancel(run_id)
            return back(request, where, "cancelled" if done else "it had already finished")
        if action == "retry":
            try:
                new = await admin.retry(run_id)
            except ValueError as exc:
                return back(request, where, str(exc))
            return back(request, f"/runs/{new}", f"run {run_id} retried as run {new}")
        if action == "run-now":
            done = await admin.run_now(run_id)
            return back(request, where, "due now" if done else "it is not waiting to be due")
        return Response("unknown action", status_code=404)

    async def bulk(request: Request, access: Access) -> Response:
        """Cancel the open runs, or retry the failed and timed-out ones, a filter selects."""
        form = request.state.form
        action = form.get("action")
        filters, problems = _filters(form)
        if problems or action not in ("cancel", "retry"):
            return back(request, "/runs", "; ".join(problems) or "unknown action")
        wanted = BULK_STATUSES[action]
        statuses = [filters.status] if filters.status in wanted else [] if filters.status else wanted
        states = [
            state
            for status in statuses
            for state in await admin.list_runs(dataclasses.replace(filters, status=status), limit=BULK_LIMIT)
        ][:BULK_LIMIT]
        changed: set[int] = set()
        note = ""
        try:
            for state in states:
                try:
                    if action == "cancel":
                        if await admin.cancel(state.run_id):
                            changed.add(state.run_id)
                    else:
                        changed.add(await admin.retry(state.run_id))
                except (RunNotFoundError, ValueError):
                    continue  # pruned, or finished meanwhile
        except JobsDError as exc:
            _log.warning("jobsd dashboard: bulk %s stopped: %s", action, exc)
            note = "; then the database stopped answering (the details are in the server's log)"
        if len(states) == BULK_LIMIT and not note:
            note = f"; that was the limit of {BULK_LIMIT}, apply it again for more"
        query = urlencode({k: v for k, v in form.items() if k not in (CSRF_FIELD, "action") and v})
        verb = "cancelled" if action == "cancel" else "retried"
        return back(request, f"/runs?{query}" if query else "/runs", f"{len(changed)} runs {verb}{note}")

    async def queue_action(request: Request, access: Access) -> Response:
        name = request.state.form.get("queue", "")
        action = request.path_params["action"]
        try:
            if action == "pause":
                changed = await admin.pause_queue(name)
            elif action == "resume":
                changed = await admin.resume_queue(name)
            else:
                return Response("unknown action", status_code=404)
        except (TypeError, ValueError) as exc:
            return back(request, "/queues", str(exc))
        done = {"pause": ("paused", "was already paused"), "resume": ("resumed", "was not paused")}[action]
        return back(request, "/queues", f"queue {name} {done[0] if changed else done[1]}")

    async def enqueue(request: Request, access: Access) -> Response:
        form = request.state.form
        jobsd = settings.jobsd
        if jobsd is None or not jobsd.is_running:
            context = {"message": "enqueueing needs a started JobsD"}
            return render(request, access, "message.html", context, status=400)
        try:
            run_id = await _enqueue(jobsd, form)
        except (TypeError, ValueError, JobsDError) as exc:
            context = _enqueue_context(settings, form, error=f"{type(exc).__name__}: {exc}")
            return render(request, access, "enqueue.html", context, status=400)
        return back(request, f"/runs/{run_id}", f"run {run_id} created")

    async def events(request: Request, access: Access) -> Response:
        headers = {"Cache-Control": "no-store"}
        if request.method == "HEAD":
            return Response(media_type="text/event-stream", headers=headers)

        async def stream() -> AsyncIterator[str]:
            # A stream ends after a while (the browser reconnects by itself), so that no open
            # page keeps a server from shutting down, nor access from being checked again.
            ends = asyncio.get_running_loop().time() + _STREAM_LIFETIME
            yield "retry: 2000\n\n"
            async with feed.listening():
                seen = feed.version
                while not await request.is_disconnected():
                    left = ends - asyncio.get_running_loop().time()
                    if left <= 0:
                        return
                    version = await feed.next_change(seen, min(_KEEPALIVE, left))
                    if version != seen:
                        seen = version
                        yield f"event: change\ndata: {version}\n\n"
                    else:
                        yield ": still here\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    routes = [
        Route("/", page(overview), name="overview"),
        Route("/runs", page(runs), name="runs"),
        Route("/runs/bulk", page(bulk), methods=["POST"]),
        Route("/runs/{run_id}", page(run), name="run"),
        Route("/runs/{run_id}/{action}", page(act_on_run), methods=["POST"]),
        Route("/instances", page(instances), name="instances"),
        Route("/queues", page(queues), name="queues"),
        Route("/queues/{action}", page(queue_action), methods=["POST"]),
        Route("/schedules", page(schedules), name="schedules"),
        Route("/enqueue", page(enqueue_form), name="enqueue"),
        Route("/enqueue", page(enqueue), methods=["POST"]),
        Route("/events", page(events), name="events"),
        Mount("/static", StaticFiles(directory=str(_HERE / "static")), name="static"),
    ]
    return Starlette(routes=routes)


# ---------------------------------------------------------------------- helpers


class _TooLarge(Exception):
    pass


async def _form(request: Request) -> dict[str, str]:
    """An url-encoded form's fields (the last value of each); at most ``MAX_FORM`` bytes."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            raise _TooLarge
    text = body.decode("utf-8", "replace")
    return {key: values[-1] for key, values in parse_qs(text, keep_blank_values=True).items()}


def _run_id(text: str) -> int:
    run_id = _id(text)
    if run_id is None:
        raise RunNotFoundError(f"no run with id {text!r}")
    return run_id


def _id(text: str) -> int | None:
    """A run id written in ASCII digits, within what the id column holds; else None."""
    if not (text.isascii() and text.isdigit()) or len(text) > 19:
        return None
    value = int(text)
    return value if 0 < value <= MAX_ID else None


def _filters(params: Any) -> tuple[RunFilter, list[str]]:
    """The run filters of a query string or form; and what is wrong with it."""
    problems: list[str] = []

    def text(name: str, limit: int = MAX_NAME_LENGTH) -> str | None:
        value = params.get(name) or ""
        if not value.strip():
            return None
        if len(value) > limit or not is_storable(value):
            problems.append(f"{name} must be at most {limit} characters without NUL or lone surrogates")
            return None
        return str(value)

    status = None
    status_text = text("status")
    if status_text:
        try:
            status = RunStatus(status_text)
        except ValueError:
            problems.append(f"unknown status {status_text!r}")
    since, until = _moment(text("since"), problems), _moment(text("until"), problems)
    before = None
    before_text = text("before")
    if before_text:
        before = _id(before_text)
        if before is None:
            problems.append(f"before must be a run id, got {before_text!r}")
    filters = RunFilter(
        status=status,
        job=text("job"),
        name=text("name"),
        queue=text("queue"),
        args=text("args", limit=1000),
        since=since,
        until=until,
        before=before,
    )
    return filters, problems


_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def _moment(value: str | None, problems: list[str]) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
        moment = (moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):
        problems.append(f"not an ISO 8601 time: {value!r}")
        return None
    if not _EARLIEST <= moment < _LATEST:
        problems.append(f"{value!r} is not between 1970 and 9000")
        return None
    return moment


def _flashed(request: Request) -> str | None:
    """The message the last action left for this page (see ``back``)."""
    value = request.cookies.get(FLASH_COOKIE)
    return unquote(value)[:300] if value else None


def _trace_id(context: str | None) -> str | None:
    """The trace id of a stored W3C trace context."""
    try:
        parent = json.loads(context or "{}").get("traceparent", "")
    except (ValueError, AttributeError):
        return None
    parts = str(parent).split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


def _enqueue_context(settings: Settings, form: dict[str, str], error: str | None = None) -> dict[str, Any]:
    jobsd = settings.jobsd
    return {
        "jobs": sorted(jobsd._jobs) if jobsd is not None else [],
        "form": {"args": "[]", "kwargs": "{}", **form},
        "error": error,
    }


async def _enqueue(jobsd: JobsD, form: dict[str, str]) -> int:
    """A run of a job registered on ``jobsd``, its arguments from JSON, validated as
    ``create_run`` validates them."""
    job = check_name("job", form.get("job", ""))
    try:
        args = json.loads(form.get("args") or "[]")
        kwargs = json.loads(form.get("kwargs") or "{}")
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"arguments must be JSON (and not nested too deep): {exc}") from exc
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise TypeError("positional arguments must be a JSON array and keyword arguments a JSON object")
    creator = jobsd.create_run(job, *args, **kwargs)
    if form.get("queue"):
        creator = creator.queue(form["queue"])
    if form.get("priority"):
        try:
            priority = int(form["priority"])
        except ValueError as exc:
            raise ValueError(f"priority must be an integer, got {form['priority']!r}") from exc
        creator = creator.priority(priority)
    return await creator.run()


def _when(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _ago(value: datetime | None) -> str:
    if value is None:
        return ""
    return _seconds((datetime.now(UTC) - value).total_seconds()) + " ago"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.0f} min"
    return f"{value / 3600:.1f} h"


def _pretty(value: Any) -> str:
    if value is None:
        return ""
    try:
        return json.dumps(value, indent=2, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(value)
