"""Backups: `seclistd backup DIR` then `seclistd restore DIR` into a fresh location (another
SQLite file, another PostgreSQL database, another GnuPG home) brings back every case, member,
join request and key: the restored project key decrypts mail encrypted to it. A tampered
backup is refused before anything is written; every refusal is one line with its exit code;
the backup is private (0700 directory, 0600 files)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import stat
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from seclistd import config, db
from seclistd.intake.store import accept
from seclistd.list_models import JoinRequest, Member
from seclistd.models import Case, Message
from tests.components import MACHINE_CLOCK, cli, report, write_config
from tests.conftest import pg_admin_url
from tests.pgp import Home, new_home
from tests.test_requests import LISTS, seed

MEMBER = "security@distro.example"


@dataclass
class Site:
    path: Path
    settings: config.Settings
    home: Home

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return cli(self.path, *args, at=MACHINE_CLOCK)

    def counts(self) -> dict[str, object]:
        engine = db.make_engine(self.settings.database.url)
        try:
            with db.session_factory(engine)() as session:
                return {
                    "cases": sorted(session.scalars(select(Case.id))),
                    "members": sorted(session.scalars(select(Member.email))),
                    "member_keys": sorted(session.scalars(select(Member.fingerprint))),
                    "requests": sorted(session.scalars(select(JoinRequest.id))),
                    "messages": session.scalar(select(func.count()).select_from(Message)),
                }
        finally:
            engine.dispose()


def site(tmp: Path, db_url: str | None, home: Home, fpr: str = "") -> Site:
    tmp.mkdir(parents=True, exist_ok=True)
    path = write_config(tmp, db_url=db_url, gnupg_home=home.path, gnupg_key=fpr, extra=LISTS)
    return Site(path, config.load(str(path)), home)


@contextlib.contextmanager
def homes(n: int) -> Iterator[list[Home]]:
    made = [new_home() for _ in range(n)]
    try:
        yield made
    finally:
        for home in made:
            home.close()


def populate(s: Site, member_key: Path) -> None:
    """Cases, a join request and a member with a pinned key, as the daemon makes them."""
    db.migrate(s.settings.database.url)
    engine = db.make_engine(s.settings.database.url)
    factory = db.session_factory(engine)
    now = dt.datetime.now(dt.UTC)  # gpg's clock is the machine's: so is this site's
    for i in (1, 2, 3):
        assert accept(factory, s.settings, report(i), source="ingest", now=now).case_id
    assert accept(factory, s.settings, seed("join_oci.eml"), source="ingest",
                  now=now).request_id
    engine.dispose()
    added = s.run("members", "add", MEMBER, "--organization", "Distro", "--key",
                  str(member_key))
    assert added.returncode == 0, added.stderr


def round_trip(tmp_path: Path, source_url: str | None, target_url: str | None) -> None:
    with homes(3) as (project, fresh, outsider):
        project_fpr = project.generate("Example security team", "security@example.org")
        member_fpr = outsider.generate("Distro", MEMBER)
        key_file = tmp_path / "member.asc"
        key_file.write_bytes(outsider.export(member_fpr))
        old = site(tmp_path / "old", source_url, project, project_fpr)
        populate(old, key_file)
        before = old.counts()
        assert len(before["cases"]) == 3 and before["requests"] and before["members"]

        out = tmp_path / "backups" / "today"
        made = old.run("backup", str(out))
        assert made.returncode == 0, made.stderr
        assert f"seclistd restore {out}" in made.stdout
        assert "database:" in made.stderr  # progress
        assert stat.S_IMODE(out.stat().st_mode) == 0o700
        for f in out.iterdir():
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["schema_revision"] == db.REVISIONS[-1]
        assert set(manifest["files"]) == {manifest["database"]["file"], "gnupg.tar"}

        # Another machine: a fresh database and an empty GnuPG home, same key fingerprint.
        new = site(tmp_path / "new", target_url, fresh, project_fpr)
        done = new.run("restore", str(out))
        assert done.returncode == 0, done.stderr
        assert "3 cases" in done.stdout and "1 members" in done.stdout, done.stdout
        assert new.counts() == before
        assert stat.S_IMODE(fresh.path.stat().st_mode) == 0o700

        # The project key came back with its secret: it decrypts mail encrypted to it.
        outsider.gpg.import_keys(project.export(project_fpr))
        secret = b"embargoed details " + uuid.uuid4().hex.encode()
        ok, plain = fresh.decrypt(outsider.encrypt(secret, project_fpr))
        assert ok and plain == secret
        # ... and the member's pinned key is in the restored keyrings.
        listed = new.run("--json", "keys", "list")
        assert listed.returncode == 0, listed.stderr
        assert project_fpr in listed.stdout
        # The restored installation works as it is.
        assert new.run("cases", "list").returncode == 0

        # Restoring again over it is refused, one line, unless forced.
        again = new.run("restore", str(out))
        assert again.returncode == 1
        assert again.stderr.count("\n") == 1 and "--force" in again.stderr
        forced = new.run("restore", str(out), "--force")
        assert forced.returncode == 0, forced.stderr
        assert "kept in" in forced.stdout
        assert new.counts() == before


def test_sqlite_backup_and_restore_into_a_fresh_location(tmp_path: Path):
    round_trip(tmp_path, None, None)


@pytest.fixture
def pg_url2() -> Iterator[str]:
    """A second fresh PostgreSQL database, to restore into."""
    admin_url = pg_admin_url()
    name = f"seclistd_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_postgresql_backup_and_restore_into_another_database(tmp_path: Path, pg_url: str,
                                                             pg_url2: str):
    round_trip(tmp_path, pg_url, pg_url2)


def _backed_up(tmp_path: Path, home: Home) -> tuple[Site, Path]:
    old = site(tmp_path / "old", None, home)
    db.migrate(old.settings.database.url)
    engine = db.make_engine(old.settings.database.url)
    accept(db.session_factory(engine), old.settings, report(1), source="ingest",
           now=dt.datetime.now(dt.UTC))
    engine.dispose()
    out = tmp_path / "bk"
    assert old.run("backup", str(out)).returncode == 0
    return old, out


def test_a_tampered_backup_is_refused_and_nothing_is_written(tmp_path: Path):
    with homes(2) as (project, fresh):
        project.generate("Example security team", "security@example.org")
        _, out = _backed_up(tmp_path, project)
        target = site(tmp_path / "new", None, fresh)
        saved = out / "database.sqlite3"
        data = bytearray(saved.read_bytes())
        data[-100] ^= 0xFF
        saved.write_bytes(bytes(data))
        done = target.run("restore", str(out))
        assert done.returncode == 1
        assert done.stderr.count("\n") == 1
        assert "database.sqlite3 does not match the SHA-256" in done.stderr
        assert not Path(db.sqlite_file(target.settings.database.url)).exists()
        assert not any(fresh.path.iterdir())

        # An altered GnuPG archive too.
        _, out2 = _backed_up(tmp_path / "second", project)
        with (out2 / "gnupg.tar").open("ab") as fh:
            fh.write(b"\0" * 512)
        done = target.run("restore", str(out2))
        assert done.returncode == 1 and "gnupg.tar does not match" in done.stderr

        # A manifest whose fields have the wrong kind (its hashes still match).
        _, out3 = _backed_up(tmp_path / "third", project)
        manifest = json.loads((out3 / "manifest.json").read_text())
        manifest["database"]["file"] = ["database.sqlite3"]
        (out3 / "manifest.json").write_text(json.dumps(manifest))
        done = target.run("restore", str(out3))
        assert done.returncode == 1 and "the manifest was altered" in done.stderr
        assert done.stderr.count("\n") == 1
        assert not Path(db.sqlite_file(target.settings.database.url)).exists()


def test_operator_mistakes_are_one_line_with_the_documented_exit_code(tmp_path: Path):
    with homes(1) as (project,):
        old, out = _backed_up(tmp_path, project)
        # A backup needs a new or empty directory.
        busy = old.run("backup", str(out))
        assert busy.returncode == 1 and "not empty" in busy.stderr
        assert busy.stderr.count("\n") == 1
        # A directory another user owns (who could swap files in it), or a symlink.
        link = tmp_path / "link"
        link.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
        refused = [(link, "symbolic link")]
        foreign = tmp_path / "foreign"
        foreign.mkdir(mode=0o777)
        if os.geteuid() == 0:  # only root can give a directory to another user
            os.chown(foreign, 65534, 65534)  # nobody
            refused.append((foreign, "belongs to another user"))
        for where, what in refused:
            done = old.run("backup", str(where))
            assert done.returncode == 1 and what in done.stderr, done.stderr
            assert done.stderr.count("\n") == 1
        assert not any(foreign.iterdir()) and not (tmp_path / "elsewhere").exists()
        # Not a backup at all.
        (tmp_path / "empty").mkdir()
        for where in (tmp_path / "empty", tmp_path / "missing"):
            done = old.run("restore", str(where))
            assert done.returncode == 2, done.stderr
            assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
        # A SQLite backup into a PostgreSQL configuration (no server needed to refuse it).
        pg = site(tmp_path / "pg", "postgresql://nobody@127.0.0.1:1/none", project)
        done = pg.run("restore", str(out))
        assert done.returncode == 2 and "sqlite" in done.stderr
        assert done.stderr.count("\n") == 1


def test_a_backup_at_an_older_schema_is_migrated_on_restore(tmp_path: Path):
    with homes(2) as (project, fresh):
        old = site(tmp_path / "old", None, project)
        db.migrate(old.settings.database.url)
        db.downgrade(old.settings.database.url, db.REVISIONS[-2])
        out = tmp_path / "bk"
        made = old.run("backup", str(out))
        assert made.returncode == 0, made.stderr
        new = site(tmp_path / "new", None, fresh)
        done = new.run("--json", "restore", str(out))
        assert done.returncode == 0, done.stderr
        doc = json.loads(done.stdout)
        assert doc["database"]["schema_revision_saved"] == db.REVISIONS[-2]
        assert doc["database"]["schema_revision"] == db.REVISIONS[-1]
        assert new.run("status").returncode == 0


def test_the_backup_timer_units_verify(tmp_path: Path):
    """The shipped daily timer and its service pass `systemd-analyze verify`."""
    units = Path(__file__).resolve().parent.parent / "systemd"
    for name in ("seclistd-backup.service", "seclistd-backup.timer"):
        (tmp_path / name).write_bytes((units / name).read_bytes())
    done = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "seclistd-backup.timer"),
                           str(tmp_path / "seclistd-backup.service")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "seclistd-backup" not in done.stderr, done.stderr


def test_a_gnupg_home_that_cannot_be_made_refuses_the_restore_before_the_database(
        tmp_path: Path):
    with homes(1) as (project,):
        project.generate("Example security team", "security@example.org")
        old, out = _backed_up(tmp_path, project)
        (tmp_path / "new").mkdir()
        blocker = tmp_path / "new" / "a-file"
        blocker.write_text("")
        path = write_config(tmp_path / "new", gnupg_home=blocker / "gnupg", extra=LISTS)
        done = cli(path, "restore", str(out), at=MACHINE_CLOCK)
        assert done.returncode == 1, done.stderr
        assert "nothing was restored" in done.stderr and "gnupg.home" in done.stderr
        assert [line for line in done.stderr.splitlines()
                if not line.startswith("seclistd: gnupg home:")] == [
            done.stderr.splitlines()[-1]]
        assert "unexpected" not in done.stderr
        settings = config.load(str(path))
        assert not Path(db.sqlite_file(settings.database.url)).exists()  # untouched
