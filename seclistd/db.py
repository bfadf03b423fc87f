"""Engine, sessions, SQLite pragmas and the Alembic migrations runner.

SQLite: WAL, ``synchronous=FULL``, foreign keys, a busy timeout, and ``BEGIN IMMEDIATE``
for every transaction (a deferred BEGIN fails at once with "database is locked" when two
writers meet; see NOTES.md). PostgreSQL: ``postgresql://`` URLs use psycopg 3.

On every backend: SQL parameters never appear in an exception's text (``hide_parameters``:
they hold message content), and a NUL character never reaches the database in a string
parameter: it becomes U+FFFD (PostgreSQL refuses NUL in text columns, and a decrypted
report may hold one). Bytes parameters (the raw message) are passed as they are.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

BUSY_TIMEOUT_MS = 30_000
PG_CONNECT_ARGS = {"connect_timeout": 10, "keepalives": 1, "keepalives_idle": 30,
                   "keepalives_interval": 10, "keepalives_count": 3}


class TicketLock:
    """A first-come, first-served lock for this process's SQLite writers.

    SQLite's busy handler sleep-polls, so a thread that commits in a tight loop (the IMAP
    intake in a burst) keeps winning the write lock and the relay waits for seconds. Taking
    a ticket before ``BEGIN IMMEDIATE`` makes the threads of one process take turns; other
    processes are still serialised by SQLite itself.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._next = 0
        self._serving = 0

    def acquire(self) -> None:
        with self._cond:
            ticket = self._next
            self._next += 1
            while self._serving != ticket:
                self._cond.wait()

    def release(self) -> None:
        with self._cond:
            self._serving += 1
            self._cond.notify_all()


def normalise_url(url: str) -> str:
    """``postgresql://`` means psycopg 3 here, never psycopg2."""
    u = make_url(url)
    if u.drivername == "postgresql":
        u = u.set(drivername="postgresql+psycopg")
    return u.render_as_string(hide_password=False)


def without_nul(parameters: Any) -> Any:
    """Statement parameters with NUL in every string replaced by U+FFFD (bytes untouched)."""
    if isinstance(parameters, str):
        return parameters.replace("\x00", "\ufffd") if "\x00" in parameters else parameters
    if isinstance(parameters, dict):
        return {key: without_nul(value) for key, value in parameters.items()}
    if isinstance(parameters, list | tuple):
        return type(parameters)(without_nul(value) for value in parameters)
    return parameters


def _guard_parameters(engine: Engine) -> None:
    @event.listens_for(engine, "before_cursor_execute", retval=True)
    def _no_nul(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any,
                _executemany: bool) -> tuple[str, Any]:
        return statement, without_nul(parameters)


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (None: not SQLite, or in memory)."""
    u = make_url(normalise_url(url))
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:" \
            or u.database.startswith("file:"):
        return None
    return Path(u.database)


def make_engine(url: str, create: bool = False) -> Engine:
    """An engine for ``url``. A SQLite file (and its directory) is created only with
    ``create`` (migrations); otherwise it is opened read-write and a missing file is an
    error, so no command but `migrate` leaves an empty database behind."""
    url = normalise_url(url)
    u = make_url(url)
    if u.get_backend_name() != "sqlite":
        # libpq's TCP keepalives: a connection to a server that vanished (host down, network
        # cut) fails within about a minute instead of hanging a thread until the OS gives up.
        engine = create_engine(url, pool_pre_ping=True, future=True, hide_parameters=True,
                               connect_args=PG_CONNECT_ARGS)
        _guard_parameters(engine)
        return engine
    path = sqlite_file(url)
    if path is not None:
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        else:
            u = u.set(database=path.absolute().as_uri(),
                      query={**u.query, "mode": "rw", "uri": "true"})
    engine = create_engine(u, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000},
                           hide_parameters=True)
    _guard_parameters(engine)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=FULL")
        cur.close()

    writers = TicketLock()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        writers.acquire()
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            writers.release()
            raise
        conn.info["seclistd_writer"] = True

    def _on_end(conn: Any) -> None:
        if conn.info.pop("seclistd_writer", False):
            writers.release()

    event.listen(engine, "commit", _on_end)
    event.listen(engine, "rollback", _on_end)

    return engine


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any exception."""
    with factory() as session, session.begin():
        yield session


def migrations_dir() -> Path:
    """The Alembic scripts: beside the package in a checkout, under share/ when installed."""
    here = Path(__file__).resolve().parent.parent / "migrations"
    if (here / "env.py").exists():
        return here
    return Path(sys.prefix) / "share" / "seclistd" / "migrations"


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return cfg


def migrate(url: str, revision: str = "head") -> None:
    """Create or upgrade the database to ``revision``."""
    from alembic import command

    make_engine(url, create=True).dispose()  # creates the SQLite directory if needed
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    from alembic import command

    command.downgrade(alembic_config(url), revision)


# The migrations in order; the last is the schema this code needs. tests/test_migrations.py
# checks this against Alembic's own history, so it cannot drift.
REVISIONS = ("0001", "0002", "0003", "0004b", "0004c", "0004e", "0004f", "0005",
             "0006")


def schema_revision(engine: Engine) -> str | None:
    """The database's Alembic revision (None: not set up), read without importing Alembic."""
    if not inspect(engine).has_table("alembic_version"):
        return None
    with engine.connect() as conn:
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def schema_problem(engine: Engine) -> str | None:
    """None when the schema is the one this code needs, else what to do about it."""
    revision = schema_revision(engine)
    if revision == REVISIONS[-1]:
        return None
    if revision is None:
        return "is not set up, run `seclistd migrate` first"
    if revision in REVISIONS:
        return (f"has schema {revision}, this seclistd needs {REVISIONS[-1]}: run "
                "`seclistd migrate`")
    return (f"has schema {revision}, newer than this seclistd knows ({REVISIONS[-1]}): "
            "run the seclistd version that migrated it")
