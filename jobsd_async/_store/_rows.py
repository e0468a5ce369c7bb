"""A row of ``{prefix}runs`` as a typed value, and the Store handle the SQL modules share."""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple, TypeVar

from sqlalchemy import Column, ColumnElement, Table, or_

from .._schedules import CRON_PREFIX, EVERY_PREFIX, cron_available
from ._dialect import Dialect
from ._schema import Tables

S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class Store:
    """The database side of one JobsD instance: its dialect and its tables."""

    dialect: Dialect
    tables: Tables
    _statements: dict[Hashable, Any] = field(default_factory=dict, compare=False, repr=False)

    def statement(self, key: Hashable, build: Callable[[], S]) -> S:
        """The statement built by ``build`` for ``key``, built once per Store.

        Hot statements take their values as bind parameters, so building them once saves
        the construction that otherwise dominates a small transaction's cost.
        """
        try:
            return self._statements[key]  # type: ignore[no-any-return]
        except KeyError:
            built = self._statements[key] = build()
            return built

    @property
    def runs(self) -> Table:
        return self.tables.runs

    @property
    def instances(self) -> Table:
        return self.tables.instances

    @property
    def queues(self) -> Table:
        return self.tables.queues

    @property
    def limits(self) -> Table:
        return self.tables.limits

    @property
    def new_channel(self) -> str:
        """PostgreSQL NOTIFY channel announcing inserted runs."""
        return self.runs.name.removesuffix("runs") + "new"

    @property
    def done_channel(self) -> str:
        """PostgreSQL NOTIFY channel carrying the run ids of each batch of completions."""
        return self.runs.name.removesuffix("runs") + "done"

    @property
    def cancel_channel(self) -> str:
        """PostgreSQL NOTIFY channel carrying ``cancel_run`` to the owner (``owner:row``)."""
        return self.runs.name.removesuffix("runs") + "cancel"


class RunRow(NamedTuple):
    """One attempt, as stored (a tuple in the column order of ``{prefix}runs``).

    A tuple because claims build one per run on the hot path: made from a result row by
    position it costs a fraction of a dataclass built by name.
    """

    id: int
    origin_id: int | None
    parent_id: int | None
    name: str
    name_active: str | None
    job: str
    job_args: str | None
    job_kwargs: str | None
    delay: float
    run_at: datetime
    run_total_count: int
    run_success_count: int
    run_success_limit: int | None
    run_started_at: datetime | None
    run_started_by: int | None
    run_completed_at: datetime | None
    run_completed_error: str | None
    run_result: str | None
    run_timeout: float | None
    run_timeout_at: datetime | None
    retries_on_error_count: int
    retries_on_error_limit: int | None
    retries_on_timeout_count: int
    retries_on_timeout_limit: int | None
    retry_backoff: float | None
    retry_backoff_cap: float | None
    schedule: str | None
    cancel_requested_at: datetime | None
    created_at: datetime
    created_by: int
    trace_context: str | None
    run_completed_traceback: str | None
    retry_policy: str | None
    run_progress: str | None
    queue: str
    priority: int
    limit_key: str | None

    @property
    def run_id(self) -> int:
        """The chain's first row id."""
        return self.origin_id if self.origin_id is not None else self.id

    @classmethod
    def of(cls, mapping: Mapping[Any, Any]) -> RunRow:
        """The row from a result mapping (any column order)."""
        return cls._make([mapping[name] for name in cls._fields])


def row_columns(runs: Table) -> list[Column[Any]]:
    """The columns of ``runs`` in :class:`RunRow` order: a statement returning them gives
    rows that ``RunRow._make`` takes by position."""
    return [runs.c[name] for name in RunRow._fields]


def schedule_computable(store: Store, registered: Collection[str]) -> ColumnElement[bool]:
    """Rows whose next tick this instance can compute: unscheduled, built-in, or registered here."""
    runs = store.runs
    known: list[ColumnElement[bool]] = [runs.c.schedule.is_(None), runs.c.schedule.startswith(EVERY_PREFIX)]
    if cron_available():
        known.append(runs.c.schedule.startswith(CRON_PREFIX))
    if registered:
        known.append(store.dialect.among(runs.c.schedule, registered))
    return or_(*known)
