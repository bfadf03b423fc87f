"""The daemon's heartbeat: one ``daemon_state`` row per running daemon, read by `status`.

Each daemon writes ``heartbeat:<host>:<pid>`` every ``INTERVAL`` seconds from its main loop,
in its own tiny transaction: the value is a JSON object (``host``, ``pid``, ``started_at``,
``interval``, ``imap_intake``) and ``updated_at`` is when it was last seen. A daemon counts
as running while its heartbeat is younger than ``STALE_AFTER`` (three intervals); a clean
stop deletes its row, a killed daemon's row goes stale and is pruned by the others after
``FORGET_AFTER``. ``imap_intake`` says whether this daemon holds the IMAP intake: on
PostgreSQL read from ``pg_locks`` (the advisory lock's holder against the backend of the
intake's lock connection), on SQLite simply whether IMAP is enabled; ``None``: unknown.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select, text
from sqlalchemy.orm import Session, sessionmaker

from seclistd.db import transaction
from seclistd.errors import describe
from seclistd.models import DaemonState

log = logging.getLogger(__name__)

PREFIX = "heartbeat:"
INTERVAL = 15.0  # seconds between two heartbeats
STALE_AFTER = dt.timedelta(seconds=3 * INTERVAL)  # no heartbeat for this long: not running
FORGET_AFTER = dt.timedelta(days=1)  # a dead daemon's row is pruned after this


@dataclass(frozen=True)
class Identity:
    host: str
    pid: int
    started_at: dt.datetime

    @property
    def key(self) -> str:
        return f"{PREFIX}{self.host}:{self.pid}"


def identity(now: dt.datetime) -> Identity:
    return Identity(socket.gethostname(), os.getpid(), now)


def intake_held(session: Session, lock: Any) -> bool | None:
    """Whether ``lock`` (an ``imap.IntakeLock``) holds the IMAP intake; None: unknown."""
    if session.get_bind().dialect.name != "postgresql":
        return True
    from seclistd.intake.imap import ADVISORY_LOCK_KEY

    conn = getattr(lock, "conn", None)
    if conn is None:
        return False
    try:
        backend = conn.connection.dbapi_connection.info.backend_pid
    except Exception:  # noqa: BLE001 - a closed or odd connection: we cannot tell
        return None
    # pg_try_advisory_lock(bigint): classid the high 32 bits, objid the low, objsubid 1.
    holder = session.scalar(text(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
        "AND classid = :hi AND objid = :lo"),
        {"hi": ADVISORY_LOCK_KEY >> 32, "lo": ADVISORY_LOCK_KEY & 0xFFFFFFFF})
    return holder is not None and int(holder) == int(backend)


def beat(session: Session, now: dt.datetime, me: Identity,
         imap_intake: bool | None) -> None:
    """Write (or refresh) this daemon's heartbeat and prune the long dead ones."""
    value = json.dumps({"host": me.host, "pid": me.pid,
                        "started_at": me.started_at.astimezone(dt.UTC).isoformat(),
                        "interval": INTERVAL, "imap_intake": imap_intake})
    row = session.get(DaemonState, me.key)
    if row is None:
        session.add(DaemonState(key=me.key, value=value, updated_at=now))
    else:
        row.value, row.updated_at = value, now
    session.execute(delete(DaemonState).where(DaemonState.key.startswith(PREFIX),
                                              DaemonState.key != me.key,
                                              DaemonState.updated_at < now - FORGET_AFTER))


def forget(session: Session, me: Identity) -> None:
    """A clean stop: this daemon no longer runs."""
    session.execute(delete(DaemonState).where(DaemonState.key == me.key))


def read(session: Session, now: dt.datetime) -> list[dict[str, Any]]:
    """Every daemon with a heartbeat on record, newest first: ``host``, ``pid``,
    ``started_at``, ``last_seen`` (aware datetimes), ``running``, ``imap_intake``."""
    rows = session.scalars(select(DaemonState).where(DaemonState.key.startswith(PREFIX))
                           .order_by(DaemonState.updated_at.desc(), DaemonState.key))
    found = []
    for row in rows:
        try:
            value = json.loads(row.value)
            started = dt.datetime.fromisoformat(value["started_at"])
            host, pid = str(value["host"]), int(value["pid"])
        except (ValueError, KeyError, TypeError):
            continue  # not ours to interpret
        running = now - row.updated_at < STALE_AFTER
        found.append({"host": host, "pid": pid, "started_at": started,
                      "last_seen": row.updated_at, "running": running,
                      "imap_intake": value.get("imap_intake") if running else False})
    return found


class Heartbeat:
    """What the daemon's main loop calls: ``tick`` each pass (it writes once per INTERVAL),
    ``stop`` at the end. A database failure is logged, never raised: the loop goes on."""

    def __init__(self, factory: sessionmaker[Session], clock: Callable[[], dt.datetime],
                 intake_lock: Any = None, interval: float = INTERVAL):
        self.factory = factory
        self.clock = clock
        self.lock = intake_lock
        self.interval = dt.timedelta(seconds=interval)
        self.me = identity(clock())
        self.last: dt.datetime | None = None

    def tick(self) -> None:
        now = self.clock()
        if self.last is not None and now - self.last < self.interval:
            return
        self.last = now
        try:
            with transaction(self.factory) as session:
                held = intake_held(session, self.lock) if self.lock is not None else None
                beat(session, now, self.me, held)
        except Exception as exc:  # noqa: BLE001 - the heartbeat must never stop the daemon
            log.warning("heartbeat not written (%s); tried again in %.0fs", describe(exc),
                        self.interval.total_seconds())

    def stop(self) -> None:
        try:
            with transaction(self.factory) as session:
                forget(session, self.me)
        except Exception as exc:  # noqa: BLE001 - stopping goes on
            log.warning("heartbeat not removed (%s)", describe(exc))
