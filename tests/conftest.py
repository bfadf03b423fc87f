"""Shared fixtures: Dovecot (one server, a fresh mailbox user per test), the relay sink,
a migrated SQLite database with its config, and a fresh PostgreSQL database."""

from __future__ import annotations

import dataclasses
import itertools
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from seclistd import config, db
from tests.components import (
    TEST_CLOCK,
    Dovecot,
    Sink,
    free_port,
    start_dovecot,
    write_config,
)

_users = itertools.count(1)


def _sleep_on_an_event(seconds: float) -> None:
    threading.Event().wait(seconds)


if "faketime" in os.environ.get("LD_PRELOAD", "") and os.environ.get(
        "FAKETIME_DONT_FAKE_MONOTONIC") == "1":
    # The whole suite runs under `faketime -f @DATE make test` (proof that it passes on any
    # day). libfaketime 0.9.10 then fails time.sleep (clock_nanosleep with an absolute
    # monotonic deadline) with EINVAL, and with a faked monotonic clock it makes timed
    # Event waits hang instead: make test keeps monotonic real, and this process (pytest,
    # subprocess.wait's polling) sleeps on an Event. seclistd itself never calls sleep.
    time.sleep = _sleep_on_an_event
    # The wrapper's shared-memory state is its own: a child that joins it with another
    # library (the multi-threaded one, tests/components.faketime_env) aborts in take_gil.
    # Every child reads the same FAKETIME and keeps a clock of its own.
    os.environ.pop("FAKETIME_SHARED", None)


@pytest.fixture(autouse=True)
def test_clock() -> Iterator[None]:
    """Every test's seclistd processes start at ``CLOCK``, never at today's date."""
    TEST_CLOCK.restart()
    yield


@pytest.fixture(scope="session")
def dovecot_server() -> Iterator[Dovecot]:
    server = start_dovecot()
    yield server
    server.stop()


@pytest.fixture
def dovecot(dovecot_server: Dovecot) -> Dovecot:
    """The shared Dovecot with a mailbox user of this test's own."""
    user = f"t{next(_users)}-{uuid.uuid4().hex[:6]}@example.org"
    return dataclasses.replace(dovecot_server, user=user)


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink(port=free_port())
    s.start()
    yield s
    s.stop()


@dataclasses.dataclass
class Env:
    path: Path
    settings: config.Settings
    factory: sessionmaker[Session]


def make_env(tmp_path: Path, **kwargs: object) -> Env:
    path = write_config(tmp_path, **kwargs)  # type: ignore[arg-type]
    settings = config.load(str(path))
    db.migrate(settings.database.url)
    engine = db.make_engine(settings.database.url)
    return Env(path=path, settings=settings, factory=db.session_factory(engine))


@pytest.fixture
def env(tmp_path: Path, sink: Sink) -> Env:
    """Migrated SQLite database, relay to the sink, no IMAP."""
    return make_env(tmp_path, relay_port=sink.port)


def pg_admin_url() -> str:
    """The PostgreSQL server of this run: `make test` names it in $SECLISTD_TEST_PG (the one on
    127.0.0.1:5432, or a throwaway cluster of its own: tests/with-postgres)."""
    return os.environ.get("SECLISTD_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh database on the run's PostgreSQL server. Never skipped: without a server the
    test fails and says how to get one."""
    import psycopg
    from sqlalchemy.engine import make_url

    admin_url = pg_admin_url()
    name = f"seclistd_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {admin_url} is not reachable ({exc}); run the suite with "
                    "`make test`, which starts a server of its own when none answers")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The suite skips nothing: a skipped test fails the run (make test provides every
    component the tests need)."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if skipped and exitstatus == 0:
        reporter.write_line(f"{len(skipped)} test(s) skipped: the suite must skip nothing",
                            red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
