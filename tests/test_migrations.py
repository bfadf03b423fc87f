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
