"""The migrations produce exactly the models, upgrade and downgrade cleanly, on SQLite and
PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from seclistd import db
from seclistd.models import Base


def assert_matches_models(url: str) -> None:
    engine = db.make_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}),
                                Base.metadata)
    engine.dispose()
    assert diff == []


def roundtrip(url: str) -> None:
    db.migrate(url)
    assert_matches_models(url)
    db.downgrade(url, "base")
    engine = db.make_engine(url)
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    engine.dispose()
    db.migrate(url)
    assert_matches_models(url)


def test_sqlite_roundtrip_and_pragmas(tmp_path: Path):
    url = f"sqlite:///{tmp_path}/m.db"
    roundtrip(url)
    engine = db.make_engine(url)
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
        assert conn.execute(text("PRAGMA foreign_key_check")).all() == []


def test_postgresql_roundtrip(pg_url: str):
    roundtrip(pg_url)


def test_the_code_knows_every_revision():
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(db.alembic_config("sqlite://"))
    history = [rev.revision for rev in reversed(list(script.walk_revisions()))]
    assert tuple(history) == db.REVISIONS


def test_an_old_schema_is_refused_with_the_fix(tmp_path: Path):
    from tests.components import cli, write_config

    path = write_config(tmp_path)
    url = f"sqlite:///{tmp_path}/seclistd.db"
    db.migrate(url, db.REVISIONS[0])
    done = cli(path, "cases", "list")
    assert done.returncode == 2
    assert f"needs {db.REVISIONS[-1]}: run `seclistd migrate`" in done.stderr
    assert cli(path, "migrate").returncode == 0
    assert cli(path, "cases", "list").returncode == 0


def test_upgrade_keeps_existing_cases_and_schedules_their_sla(tmp_path: Path):
    url = f"sqlite:///{tmp_path}/old.db"
    db.migrate(url, "0001")
    engine = db.make_engine(url)
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO cases (id, state, subject, reporter, received_at, ack_due, "
            "missing_information, encrypted) VALUES ('SEC-2026-0001', 'new', 's', 'r@x', "
            "'2026-11-19 15:00:00.000000', '2026-11-25 04:59:59.000000', '[]', 0)"))
    engine.dispose()
    db.migrate(url)
    from seclistd.models import Case

    factory = db.session_factory(db.make_engine(url))
    with factory() as session:
        case = session.get(Case, "SEC-2026-0001")
        assert case.ack_stage == 0 and case.update_reminders == 0
        assert case.next_sla_at == case.received_at
