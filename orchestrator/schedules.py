"""Cron schedules (issue 14): a cron expression in a time zone, a job spec template, an
overlap policy and a catch-up policy, kept in the store.

Beat sends ``launchbay.fire_schedules`` every ``schedule_tick_s``; any number of beats may
run. A tick fires once because moving ``next_fire_at`` from the tick's time to the next is
a compare-and-set: of two beats (or a beat and its restarted self) only one wins it, and
the job it then makes has an id derived from the schedule and the tick, so even a winner
that died between the two is completed by the next look (never doubled). Cron arithmetic
is cronsim's (DST-aware with a zone), not ours.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
from cronsim import CronSim, CronSimError
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter

from orchestrator.errors import LaunchbayError, ParamError
from orchestrator.job import Job, JobSpec, as_utc
from orchestrator.schema import schedules

if TYPE_CHECKING:
    from orchestrator.dispatch import Dispatcher

log = logging.getLogger(__name__)

SCHEDULE_LABEL = "launchbay.schedule"
_SPEC = TypeAdapter(JobSpec)
_RECOVER_WITHIN = timedelta(hours=1)


class ScheduleNotFound(LaunchbayError):
    status_code = 404

    def __init__(self, schedule_id: str) -> None:
        super().__init__(f"schedule {schedule_id} not found")


def _check_cron(expr: str) -> str:
    try:
        CronSim(expr, datetime(2026, 1, 1))
    except (CronSimError, ValueError) as exc:
        raise ParamError("cron", f"not a cron expression: {exc}") from None
    return expr


def _check_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ParamError("timezone", f"unknown time zone {name!r}") from None
    return name


Cron = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_check_cron)]
Zone = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_check_zone)]
Overlap = Literal["skip", "queue", "cancel_previous"]
Catchup = Literal["once", "skip"]
_STRICT = ConfigDict(extra="forbid")


class ScheduleIn(BaseModel):
    model_config = _STRICT
    name: str = Field(min_length=1, max_length=200)
    cron: Cron = Field(description="Five-field cron expression, e.g. '*/5 * * * *'.")
    timezone: Zone = Field(default="UTC", description="IANA zone the expression is read in.")
    spec: JobSpec = Field(description="The job each tick submits.")
    overlap: Overlap = Field(
        default="skip",
        description="When the previous run has not ended: skip this tick, queue behind it, "
        "or cancel it and run.",
    )
    catchup: Catchup = Field(
        default="once",
        description="Ticks missed while no beat ran: fire once for all of them, or skip.",
    )
    paused: bool = False


class SchedulePatch(BaseModel):
    model_config = _STRICT
    name: str | None = Field(default=None, min_length=1, max_length=200)
    cron: Cron | None = None
    timezone: Zone | None = None
    spec: JobSpec | None = None
    overlap: Overlap | None = None
    catchup: Catchup | None = None
    paused: bool | None = None


class Schedule(ScheduleIn):
    model_config = ConfigDict(extra="ignore")
    id: str
    next_fire_at: datetime | None = None
    last_fire_at: datetime | None = None
    last_job_id: str | None = None
    created_at: datetime
    updated_at: datetime
    next_fire_times: list[datetime] = Field(default_factory=list)


def next_times(cron: str, zone: str, after: datetime, n: int = 1) -> list[datetime]:
    """The next ``n`` times ``cron`` (read in ``zone``) fires after ``after``, in UTC."""
    it = CronSim(cron, as_utc(after).astimezone(ZoneInfo(zone)))
    return [as_utc(next(it)) for _ in range(n)]


def tick_job_id(schedule_id: str, tick: datetime) -> str:
    """The id of the job a tick makes: one per (schedule, tick), so a tick cannot fire twice."""
    return f"{schedule_id[:32]}-{int(as_utc(tick).timestamp())}"


def _queue_key(schedule_id: str) -> str:
    return f"schedule:{schedule_id}"


class Schedules:
    """Schedules in the store and the firing of their ticks."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.d = dispatcher
        self.store = dispatcher.store

    # ------------------------------------------------------------ CRUD

    def _row(self, row: Any, *, upcoming: int = 5) -> Schedule:
        m = dict(row._mapping)
        s = Schedule.model_validate(m)
        if not s.paused:
            s.next_fire_times = next_times(s.cron, s.timezone, self.store.now(), upcoming)
        return s

    def get(self, schedule_id: str) -> Schedule:
        with self.store.engine.connect() as c:
            row = c.execute(sa.select(schedules).where(schedules.c.id == schedule_id)).first()
        if row is None:
            raise ScheduleNotFound(schedule_id)
        return self._row(row)

    def list(self) -> list[Schedule]:
        with self.store.engine.connect() as c:
            rows = c.execute(sa.select(schedules).order_by(schedules.c.created_at)).all()
        return [self._row(r) for r in rows]

    def create(self, new: ScheduleIn) -> Schedule:
        now = self.store.now()
        sid = uuid.uuid4().hex
        with self.store.engine.begin() as c:
            c.execute(
                schedules.insert().values(
                    id=sid,
                    name=new.name,
                    cron=new.cron,
                    timezone=new.timezone,
                    spec=new.spec.model_dump(mode="json"),
                    overlap=new.overlap,
                    catchup=new.catchup,
                    paused=new.paused,
                    next_fire_at=next_times(new.cron, new.timezone, now)[0],
                    created_at=now,
                    updated_at=now,
                )
            )
        self._sync_queue_limit(sid, new.overlap, new.spec)
        return self.get(sid)

    def update(self, schedule_id: str, patch: SchedulePatch) -> Schedule:
        old = self.get(schedule_id)
        changes: dict[str, Any] = patch.model_dump(exclude_unset=True, exclude={"spec"})
        if patch.spec is not None:
            changes["spec"] = patch.spec.model_dump(mode="json")
        for field in ("name", "cron", "timezone", "overlap", "catchup", "paused"):
            if field in changes and changes[field] is None:
                raise ParamError(field, "may not be null")
        now = self.store.now()
        cron = changes.get("cron", old.cron)
        zone = changes.get("timezone", old.timezone)
        if {"cron", "timezone"} & changes.keys() or changes.get("paused") is False:
            # A new expression, or a resumed schedule, fires from now on (no catch-up of
            # ticks that belonged to the old expression or to the pause).
            changes["next_fire_at"] = next_times(cron, zone, now)[0]
        with self.store.engine.begin() as c:
            c.execute(
                schedules.update()
                .where(schedules.c.id == schedule_id)
                .values(**changes, updated_at=now)
            )
        new = self.get(schedule_id)
        self._sync_queue_limit(schedule_id, new.overlap, new.spec)
        return new

    def delete(self, schedule_id: str) -> Schedule:
        old = self.get(schedule_id)
        with self.store.engine.begin() as c:
            c.execute(schedules.delete().where(schedules.c.id == schedule_id))
        self._sync_queue_limit(schedule_id, "skip", old.spec)
        return old

    def _sync_queue_limit(self, schedule_id: str, overlap: str, spec: Any) -> None:
        """``overlap: queue`` without a key of its own: runs share the key
        ``schedule:<id>`` limited to 1, so each waits for the one before."""
        own = overlap == "queue" and spec.concurrency_key is None
        self.d.flow.set_limit(_queue_key(schedule_id), 1 if own else None)

    # ------------------------------------------------------------ firing

    def fire_due(self) -> dict[str, int]:
        """Fire every due tick once; counts of fired, skipped and lost-to-another-beat."""
        now = self.store.now()
        grace = timedelta(seconds=self.d.settings.schedule_grace_s)
        counts = {"fired": 0, "skipped": 0, "raced": 0, "recovered": 0}
        with self.store.engine.connect() as c:
            due = c.execute(
                sa.select(schedules).where(
                    schedules.c.paused.is_(False), schedules.c.next_fire_at <= now
                )
            ).all()
            recent = c.execute(
                sa.select(schedules).where(
                    schedules.c.last_job_id.is_not(None),
                    schedules.c.last_fire_at >= now - _RECOVER_WITHIN,
                )
            ).all()
        for row in recent:  # a winner that died between its CAS and its job
            if (
                row.last_job_id == tick_job_id(row.id, row.last_fire_at)
                and self.store.find(row.last_job_id) is None
                and self._make_job(row, row.last_fire_at) is not None
            ):
                counts["recovered"] += 1
        for row in due:
            tick: datetime = row.next_fire_at
            missed = now - tick > grace
            nxt = next_times(row.cron, row.timezone, max(now, tick))[0]
            fire = not missed or row.catchup == "once"
            previous = self.store.find(row.last_job_id) if row.last_job_id else None
            busy = previous is not None and not previous.ended
            if fire and busy and row.overlap == "skip":
                fire = False
            job_id = tick_job_id(row.id, tick) if fire else row.last_job_id
            with self.store.engine.begin() as c:
                won = c.execute(
                    schedules.update()
                    .where(schedules.c.id == row.id, schedules.c.next_fire_at == tick)
                    .values(
                        next_fire_at=nxt,
                        last_fire_at=tick if fire else row.last_fire_at,
                        last_job_id=job_id,
                    )
                ).rowcount
            if not won:
                counts["raced"] += 1
                continue
            if not fire:
                counts["skipped"] += 1
                log.info("schedule %s: tick %s skipped", row.id, tick.isoformat())
                continue
            if busy and row.overlap == "cancel_previous" and previous is not None:
                with contextlib.suppress(LaunchbayError):  # it ended meanwhile
                    self.d.cancel(previous.id)
            if self._make_job(row, tick) is not None:
                counts["fired"] += 1
        return counts

    def _make_job(self, row: Any, tick: datetime) -> Any:
        spec = _SPEC.validate_python(row.spec)
        labels = {**spec.labels, SCHEDULE_LABEL: row.id}
        update: dict[str, Any] = {"labels": labels}
        if row.overlap == "queue" and spec.concurrency_key is None:
            update["concurrency_key"] = _queue_key(row.id)
        spec = spec.model_copy(update=update)
        try:
            return self.d.submit(spec, job_id=tick_job_id(row.id, tick))
        except sa.exc.IntegrityError:  # made already (the recovery raced the winner)
            return None
        except LaunchbayError:
            log.exception("schedule %s: tick %s could not submit", row.id, tick.isoformat())
            return None

    def runs(self, schedule_id: str, limit: int = 20) -> builtins.list[Job]:
        self.get(schedule_id)
        found, _ = self.store.list(labels={SCHEDULE_LABEL: schedule_id}, limit=limit)
        return found
