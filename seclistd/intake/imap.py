"""IMAP intake: IDLE when offered, polling otherwise; move only after commit.

Each pass selects ``imap.folder``, lists its UIDs and takes them in chunks: it asks for their
sizes, then fetches the bodies one group (at most ``FETCH_BUDGET`` bytes) at a time, storing
and processing every message of a group in its own transaction (``store.accept``) before
fetching the next group. A message larger than ``limits.max_message_bytes`` is never
fetched: its header alone is, and it is recorded as quarantined from that and its
``RFC822.SIZE``. Only then are the committed ones moved to ``processed_folder`` or
``quarantine_folder``, in one MOVE per chunk. A crash between the
commit and the MOVE leaves the message in the inbox; the next pass finds its (folder,
UIDVALIDITY, UID) or its Message-ID + SHA-256 already stored and just moves it. When the
server changes UIDVALIDITY the content hash still recognises what was stored.

Connections use read timeouts; IDLE is re-issued at least every ``poll_interval`` seconds
(and never held longer than 25 minutes); any error drops the connection and reconnects with
exponential backoff. On PostgreSQL only one daemon at a time holds the intake (an advisory
lock on a connection of its own, see ``IntakeLock``); the others try to take it every few
seconds, so one of them takes over within seconds when the holder dies.
No string taken from a message is ever put into an IMAP command.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import ssl
import threading
import time
from collections.abc import Callable
from imaplib import IMAP4

from imapclient import IMAPClient, SocketTimeout
from sqlalchemy import Connection, Engine, select, text
from sqlalchemy.orm import Session, sessionmaker

from seclistd.config import ImapSettings, Settings
from seclistd.db import transaction
from seclistd.errors import describe
from seclistd.intake.store import ImapLocation, Outcome, accept, quarantine_unfetched
from seclistd.models import DaemonState, Message

log = logging.getLogger(__name__)

CHUNK = 25
FETCH_BUDGET = 32 * 1024 * 1024  # bytes of message bodies asked for in one FETCH
MAX_IDLE = 25 * 60
ADVISORY_LOCK_KEY = 0x5EC1157D
LOCK_CHECK = 5.0  # seconds between the holder's checks that it still holds the intake lock


def connect(s: ImapSettings) -> IMAPClient:
    timeout = SocketTimeout(connect=min(s.timeout, 30), read=s.timeout)
    context = ssl.create_default_context() if s.security != "none" else None
    client = IMAPClient(s.host, port=s.port, ssl=s.security == "tls", ssl_context=context,
                        timeout=timeout)
    if s.security == "starttls":
        client.starttls(context)
    client.login(s.username, s.password)
    return client


def ensure_folders(client: IMAPClient, s: ImapSettings) -> None:
    for name in (s.processed_folder, s.quarantine_folder):
        if not client.folder_exists(name):
            client.create_folder(name)


def move(client: IMAPClient, uids: list[int], folder: str) -> None:
    if not uids:
        return
    if client.has_capability("MOVE"):
        client.move(uids, folder)
        return
    client.copy(uids, folder)
    client.delete_messages(uids)
    if client.has_capability("UIDPLUS"):
        client.uid_expunge(uids)
    else:
        client.expunge()


def set_state(session: Session, key: str, value: str, now: dt.datetime) -> None:
    row = session.get(DaemonState, key)
    if row is None:
        session.add(DaemonState(key=key, value=value, updated_at=now))
    else:
        row.value, row.updated_at = value, now


def run_pass(client: IMAPClient, settings: Settings, factory: sessionmaker[Session],
             clock: Callable[[], dt.datetime], stop: threading.Event | None = None,
             on_commit: Callable[[], None] = lambda: None) -> int:
    """Take in everything waiting in the folder; returns how many new messages were stored."""
    s = settings.imap
    info = client.select_folder(s.folder)
    uidvalidity = int(info[b"UIDVALIDITY"])
    uids = sorted(client.search("ALL"))
    stop = stop or threading.Event()
    stored_new = 0
    for start in range(0, len(uids), CHUNK):
        stored_new += take_chunk(client, settings, factory, clock, uidvalidity,
                                 uids[start:start + CHUNK], stop, on_commit)
        if stop.is_set():
            break
    with transaction(factory) as session:
        now = clock()
        set_state(session, "last_imap_pass", now.isoformat(), now)
        set_state(session, "imap_uidvalidity", str(uidvalidity), now)
    return stored_new


def take_chunk(client: IMAPClient, settings: Settings, factory: sessionmaker[Session],
               clock: Callable[[], dt.datetime], uidvalidity: int, chunk: list[int],
               stop: threading.Event, on_commit: Callable[[], None]) -> int:
    """Store and process one chunk of UIDs, then move them; how many were new."""
    s = settings.imap
    done: dict[str, list[int]] = {s.processed_folder: [], s.quarantine_folder: []}
    stored_new = 0

    def settled(uid: int, outcome: Outcome) -> None:
        nonlocal stored_new
        if not outcome.duplicate:
            stored_new += 1
            on_commit()
        done[s.quarantine_folder if outcome.status == "quarantined"
             else s.processed_folder].append(uid)

    with transaction(factory) as session:
        known = known_uids(session, s.folder, uidvalidity, chunk)
    for uid, status in known.items():
        done[s.quarantine_folder if status == "quarantined" else s.processed_folder].append(uid)
    wanted = [u for u in chunk if u not in known]
    sizes = ({uid: int(item.get(b"RFC822.SIZE", 0))
              for uid, item in client.fetch(wanted, ["RFC822.SIZE"]).items()}
             if wanted else {})
    wanted = [u for u in wanted if u in sizes]  # the others were expunged meanwhile
    limit = settings.limits.max_message_bytes
    too_big = [u for u in wanted if sizes[u] > limit]
    if too_big:
        for uid, outcome in quarantine_too_big(client, settings, factory, clock, uidvalidity,
                                               too_big, sizes):
            settled(uid, outcome)
    # One FETCH group at a time, each stored before the next is asked for: at most one
    # group's bodies are in memory, and a stop request waits for one message at most.
    for group in by_budget([u for u in wanted if sizes[u] <= limit], sizes, FETCH_BUDGET):
        if stop.is_set():
            break
        fetched = client.fetch(group, ["BODY.PEEK[]"])
        for uid in group:
            if stop.is_set():
                break
            item = fetched.pop(uid, None)
            raw = item.get(b"BODY[]") if item else None
            if raw is None:
                continue  # expunged meanwhile, or the server did not return it
            settled(uid, accept(factory, settings, raw, source="imap", now=clock(),
                                imap=ImapLocation(s.folder, uidvalidity, uid)))
    for folder, moved in done.items():
        move(client, moved, folder)
    return stored_new


def quarantine_too_big(client: IMAPClient, settings: Settings, factory: sessionmaker[Session],
                       clock: Callable[[], dt.datetime], uidvalidity: int, uids: list[int],
                       sizes: dict[int, int]) -> list[tuple[int, Outcome]]:
    """Quarantine messages over ``limits.max_message_bytes`` from their size and header
    (at most ``limits.max_header_bytes`` of it), never fetching their bodies."""
    s = settings.imap
    part = f"BODY.PEEK[HEADER]<0.{settings.limits.max_header_bytes}>"
    fetched = client.fetch(uids, [part])
    outcomes = []
    for uid in uids:
        item = fetched.get(uid) or {}
        header = next((v for k, v in item.items()
                       if k.startswith(b"BODY[HEADER]") and isinstance(v, bytes)), None)
        if header is None:
            continue  # expunged meanwhile
        outcomes.append((uid, quarantine_unfetched(
            factory, settings, header, sizes[uid], source="imap", now=clock(),
            imap=ImapLocation(s.folder, uidvalidity, uid))))
    return outcomes


def by_budget(uids: list[int], sizes: dict[int, int], budget: int) -> list[list[int]]:
    """UIDs in order, grouped so that no FETCH asks for more than ``budget`` bytes (a larger
    message gets a FETCH of its own): a chunk of big proofs of concept is not held at once."""
    groups: list[list[int]] = []
    total = 0
    for uid in uids:
        size = sizes.get(uid, 0)
        if not groups or total + size > budget:
            groups.append([])
            total = 0
        groups[-1].append(uid)
        total += size
    return groups


def known_uids(session: Session, folder: str, uidvalidity: int, uids: list[int]
               ) -> dict[int, str]:
    rows = session.execute(select(Message.imap_uid, Message.status).where(
        Message.imap_folder == folder, Message.imap_uidvalidity == uidvalidity,
        Message.imap_uid.in_(uids)))
    return {uid: status for uid, status in rows}


class LostLock(Exception):
    """The connection that held the intake lock is gone: another daemon may hold it now."""


class IntakeLock:
    """On PostgreSQL, a session advisory lock so that one daemon at a time reads IMAP.

    The lock lives on a connection of its own, in autocommit (never idle in a transaction),
    with TCP keepalives on the server's side: when the holder dies, PostgreSQL ends its
    session and the lock with it (at once when the process is killed, since its socket is
    closed; within about ``KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_COUNT`` seconds
    when its host or the network goes), and a standby takes it at its next try
    (every ``RETRY`` seconds). ``held`` tells the holder whether it still has it.
    """

    RETRY = 3.0  # seconds between a standby's tries
    KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 10, 5, 3

    def __init__(self, engine: Engine):
        self.engine = engine
        self.conn: Connection | None = None

    @property
    def shared(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def _connect(self) -> Connection:
        conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            for name, value in (("tcp_keepalives_idle", self.KEEPALIVE_IDLE),
                                ("tcp_keepalives_interval", self.KEEPALIVE_INTERVAL),
                                ("tcp_keepalives_count", self.KEEPALIVE_COUNT)):
                conn.execute(text(f"SET {name} = {int(value)}"))
        except Exception:
            self._drop(conn)
            raise
        return conn

    def _drop(self, conn: Connection | None) -> None:
        """Close a connection that may be broken; it never goes back to the pool."""
        if conn is None:
            return
        with contextlib.suppress(Exception):
            conn.invalidate()
        with contextlib.suppress(Exception):
            conn.close()
        if conn is self.conn:
            self.conn = None

    def acquire(self) -> bool:
        """Take the lock if nobody holds it (True: we hold it now, or held it already)."""
        if not self.shared:
            return True
        if self.conn is not None and self.held():
            return True
        self._drop(self.conn)
        self.conn = self._connect()
        try:
            got = bool(self.conn.execute(text("SELECT pg_try_advisory_lock(:k)"),
                                         {"k": ADVISORY_LOCK_KEY}).scalar())
        except Exception:
            self._drop(self.conn)
            raise
        if not got:
            self._drop(self.conn)  # a standby keeps no connection open between tries
        return got

    def held(self) -> bool:
        """Whether our lock connection is alive and holds the lock."""
        if not self.shared:
            return True
        if self.conn is None:
            return False
        try:
            return bool(self.conn.execute(text(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' "
                "AND pid = pg_backend_pid() AND granted AND objid = :lo AND classid = :hi)"),
                {"lo": ADVISORY_LOCK_KEY & 0xFFFFFFFF, "hi": ADVISORY_LOCK_KEY >> 32}).scalar())
        except Exception:  # noqa: BLE001 - a broken connection holds nothing
            self._drop(self.conn)
            return False

    def check(self) -> None:
        """Raise ``LostLock`` unless we still hold the lock."""
        if not self.held():
            raise LostLock("the intake lock's database connection was lost")

    def release(self) -> None:
        if self.conn is not None:
            try:
                with contextlib.suppress(Exception):
                    self.conn.execute(text("SELECT pg_advisory_unlock_all()"))
            finally:
                self._drop(self.conn)


class ImapIntake:
    """The daemon's IMAP loop, run in its own thread (one IMAP client per thread)."""

    def __init__(self, settings: Settings, engine: Engine, factory: sessionmaker[Session],
                 clock: Callable[[], dt.datetime], stop: threading.Event,
                 on_commit: Callable[[], None] = lambda: None,
                 current: Callable[[], Settings] | None = None):
        # ``current``: the daemon's live settings, read for each pass (SIGHUP swaps them;
        # the [imap] section itself only changes with a restart, the connection stays).
        self._settings = settings
        self._current = current
        self.factory = factory
        self.clock = clock
        self.stop = stop
        self.on_commit = on_commit
        self.lock = IntakeLock(engine)
        self.idling = threading.Event()  # set while the server may push new mail (IDLE)

    @property
    def settings(self) -> Settings:
        return self._current() if self._current is not None else self._settings

    def run(self) -> None:
        s = self.settings.imap
        delay = 1.0
        standing_by = holding = False
        while not self.stop.is_set():
            try:
                if not self.lock.acquire():
                    if not standing_by:
                        log.info("another daemon holds the IMAP intake; standing by (trying "
                                 "again every %.0fs)", self.lock.RETRY)
                        standing_by = True
                    holding = False
                    self.stop.wait(self.lock.RETRY)
                    continue
                if self.lock.shared and not holding:
                    log.info("IMAP intake lock taken: this daemon reads %s", s.folder)
                standing_by, holding = False, True
                self._session()
                delay = 1.0
            except LostLock as exc:
                log.warning("IMAP intake: %s; standing by", exc)
                self.lock.release()
                holding = False
            except Exception as exc:  # noqa: BLE001 - any failure: reconnect with backoff
                holding = holding and self.lock.conn is not None
                # The server's and the socket's words help the operator; any other error
                # (the database's) may quote message content: its type and place only.
                said = (f"{type(exc).__name__}: {exc}" if isinstance(exc, OSError | IMAP4.error)
                        else describe(exc))
                log.warning("IMAP %s:%s: %s; reconnecting in %.0fs", s.host, s.port, said,
                            delay)
                self.stop.wait(delay)
                delay = min(delay * 2, 300.0)
        self.lock.release()

    def _session(self) -> None:
        s = self.settings.imap
        client = connect(s)
        try:
            ensure_folders(client, s)
            log.info("IMAP connected to %s:%s, folder %s", s.host, s.port, s.folder)
            idle = s.idle and client.has_capability("IDLE")
            while not self.stop.is_set():
                self.lock.check()  # never read on once another daemon may have taken over
                run_pass(client, self.settings, self.factory, self.clock, self.stop,
                         self.on_commit)
                if idle:
                    self._idle(client)
                else:
                    self._wait(s.poll_interval)
        finally:
            with contextlib.suppress(Exception):  # the connection may be gone already
                client.logout()

    def _wait(self, seconds: float) -> None:
        """Wait between polls, checking the lock every ``LOCK_CHECK`` seconds."""
        deadline = time.monotonic() + seconds
        while not self.stop.is_set() and (left := deadline - time.monotonic()) > 0:
            self.stop.wait(min(left, LOCK_CHECK))
            self.lock.check()

    def _idle(self, client: IMAPClient) -> None:
        limit = min(self.settings.imap.poll_interval, MAX_IDLE)
        client.idle()
        started = time.monotonic()
        self.idling.set()
        try:
            checked = started
            while not self.stop.is_set() and time.monotonic() - started < limit:
                if client.idle_check(timeout=1):
                    break
                if time.monotonic() - checked >= LOCK_CHECK:
                    checked = time.monotonic()
                    self.lock.check()
        finally:
            self.idling.clear()
            client.idle_done()
