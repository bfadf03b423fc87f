"""Shared fixtures: Dovecot (one server, a fresh mailbox user per test), the relay sink,
a migrated SQLite database with its config, and a PostgreSQL database when one runs."""

from __future__ import annotations

import dataclasses
import itertools
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from seclistd import config, db
from tests.components import Dovecot, Sink, free_port, start_dovecot, write_config

_users = itertools.count(1)


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


PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database on 127.0.0.1:5432; required in CI, skipped elsewhere."""
    import os

    import psycopg

    name = f"seclistd_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 not reachable: {exc}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
