"""Backups of an installation and their restore: the database (SQLite through its online
backup API, consistent while the daemon writes; PostgreSQL through ``pg_dump`` in custom
format and ``pg_restore``), the GnuPG home (a tar keeping modes), and a manifest naming each
file with its SHA-256.

A backup directory is created 0700 and every file in it 0600: it holds the project's secret
key and every embargoed report. ``restore`` checks every hash before it touches anything,
refuses to overwrite a database or GnuPG home that holds data unless forced, and migrates a
database saved at an older schema. Failures are :class:`BackupError`, one line each, with
the exit code the CLI should use.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url

from seclistd import db
from seclistd.config import Settings

MANIFEST = "manifest.json"
FORMAT = 1
SQLITE_FILE = "database.sqlite3"
PG_FILE = "database.pgdump"
GNUPG_FILE = "gnupg.tar"
# Sockets and lock files belong to running gpg processes, not to the keyring.
_SKIP_PREFIXES = ("S.",)
_SKIP_SUFFIXES = (".lock",)
_EXIT_FAILED, _EXIT_USAGE = 1, 2

Progress = Callable[[str], None]


class BackupError(Exception):
    """One line saying what is wrong and what would be right, and the exit code."""

    def __init__(self, message: str, code: int = _EXIT_FAILED):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Restored:
    database: str
    kind: str
    revision_saved: str
    revision_now: str
    created_at: str
    counts: dict[str, int]
    gnupg_home: str
    gnupg_files: int
    previous_gnupg_home: str | None


# --- helpers ---------------------------------------------------------------------------------

def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def kind_of(url: str) -> str:
    backend = make_url(db.normalise_url(url)).get_backend_name()
    if backend == "sqlite":
        if db.sqlite_file(url) is None:
            raise BackupError("database.url names an in-memory SQLite database: there is "
                              "nothing to back up or restore; use a file", _EXIT_USAGE)
        return "sqlite"
    if backend == "postgresql":
        return "postgresql"
    raise BackupError(f"database.url uses {backend}, expected sqlite or postgresql",
                      _EXIT_USAGE)


def _libpq(url: str) -> tuple[str, dict[str, str]]:
    """A libpq URI without the password (the command line is visible to every user) and the
    environment that carries the password."""
    u = make_url(db.normalise_url(url))
    env = dict(os.environ)
    if u.password:
        env["PGPASSWORD"] = str(u.password)
    plain = u.set(drivername="postgresql", password=None)
    return plain.render_as_string(hide_password=False), env


def _tool(name: str) -> str:
    found = shutil.which(name)
    if not found:
        raise BackupError(f"{name} is not installed: install PostgreSQL's client programs "
                          "(Debian: apt-get install postgresql-client), the same major "
                          "version as the server or newer")
    return found


def _run_tool(args: list[str], env: dict[str, str], what: str) -> None:
    done = subprocess.run(args, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, errors="replace")
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        first = (lines[0] if lines else f"exit status {done.returncode}")[:300]
        raise BackupError(f"{what} failed ({first}); check database.url and that the "
                          "server runs")


def _private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 (refusing an existing one)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _count_rows(engine: Any) -> dict[str, int]:
    tables = {"cases": "cases", "messages": "messages", "members": "members",
              "join_requests": "join_requests", "outbox": "outbox"}
    have = set(inspect(engine).get_table_names())
    counts = {}
    with engine.connect() as conn:
        for label, table in tables.items():
            if table in have:
                counts[label] = int(conn.execute(text(f"SELECT count(*) FROM {table}"))
                                    .scalar() or 0)
    return counts


# --- backup ----------------------------------------------------------------------------------

def backup(settings: Settings, dest: Path, now: dt.datetime, progress: Progress,
           version: str) -> dict[str, Any]:
    """Write a backup of ``settings``' database and GnuPG home into ``dest`` (absent or
    empty); returns the manifest, which is written last: a directory without one is an
    unfinished backup."""
    kind = kind_of(settings.database.url)
    _prepare_dest(dest)
    engine = _source_engine(settings.database.url, kind)
    try:
        revision = db.schema_revision(engine)
        if revision is None:
            raise BackupError("the database is not set up (no schema): nothing to back up; "
                              "run `seclistd migrate` first", _EXIT_USAGE)
        counts = _count_rows(engine)
    except BackupError:
        raise
    except Exception as exc:  # noqa: BLE001 - any connection failure reads the same
        raise BackupError(f"cannot read the database ({exc.__class__.__name__}); check "
                          "database.url and that the server runs") from exc
    finally:
        engine.dispose()
    files: dict[str, dict[str, Any]] = {}
    if kind == "sqlite":
        name = SQLITE_FILE
        _backup_sqlite(db.sqlite_file(settings.database.url), dest / name, progress)
    else:
        name = PG_FILE
        _backup_postgres(settings.database.url, dest / name, progress)
    files[name] = {"sha256": sha256_of(dest / name), "size": (dest / name).stat().st_size}
    home = Path(settings.gnupg.home)
    gnupg_entries = 0
    if home.is_dir():
        gnupg_entries = _backup_gnupg(home, dest / GNUPG_FILE, progress)
        files[GNUPG_FILE] = {"sha256": sha256_of(dest / GNUPG_FILE),
                             "size": (dest / GNUPG_FILE).stat().st_size}
    else:
        progress(f"gnupg home {home} does not exist: the backup holds no keys")
    manifest = {
        "format": FORMAT,
        "seclistd_version": version,
        "schema_revision": revision,
        "created_at": now.astimezone(dt.UTC).isoformat(),
        "database": {"kind": kind, "file": name, "counts": counts},
        "gnupg": {"file": GNUPG_FILE if GNUPG_FILE in files else None,
                  "entries": gnupg_entries},
        "files": files,
    }
    _private_file(dest / MANIFEST)
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    _fsync_dir(dest)
    return manifest


def _prepare_dest(dest: Path) -> None:
    if dest.is_symlink():
        raise BackupError(f"{dest} is a symbolic link: name a real directory (the backup "
                          "holds the secret keys)")
    if dest.exists():
        if dest.is_dir() and dest.stat().st_uid != os.geteuid():
            raise BackupError(f"{dest} belongs to another user, who could swap the files "
                              "written into it: name a directory of this user's, or a new one")
        if not dest.is_dir():
            raise BackupError(f"{dest} is a file: name a new or empty directory", _EXIT_USAGE)
        if any(dest.iterdir()):
            raise BackupError(f"{dest} is not empty: name a new or empty directory (one per "
                              "backup, e.g. with the date in its name)")
        dest.chmod(0o700)
        return
    try:
        dest.mkdir(mode=0o700, parents=True)
    except OSError as exc:
        raise BackupError(f"cannot create {dest} ({exc.strerror}): name a directory "
                          "this user may create") from exc
    dest.chmod(0o700)  # whatever the umask


def _source_engine(url: str, kind: str) -> Any:
    if kind == "sqlite":
        path = db.sqlite_file(url)
        if path is None or not path.exists():
            raise BackupError(f"no database at {path}: check database.url", _EXIT_USAGE)
    return db.make_engine(url)


def _backup_sqlite(source: Path | None, target: Path, progress: Progress) -> None:
    assert source is not None
    _private_file(target)
    shown = [-1]

    def report(_status: int, remaining: int, total: int) -> None:
        percent = 100 if total <= 0 else int(100 * (total - remaining) / total)
        if percent // 25 > shown[0]:
            shown[0] = percent // 25
            progress(f"database: {percent}% of {total} pages copied")

    progress(f"database: copying {source} (SQLite online backup)")
    src = sqlite3.connect(f"{source.absolute().as_uri()}?mode=ro", uri=True,
                          timeout=db.BUSY_TIMEOUT_MS / 1000)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst, pages=1024, progress=report)
        # A single self-contained file: no -wal beside it.
        dst.execute("PRAGMA journal_mode=DELETE")
        dst.commit()
    except sqlite3.Error as exc:
        raise BackupError(f"cannot copy the SQLite database ({exc}); check that "
                          f"{source} is readable and the disk has room") from exc
    finally:
        dst.close()
        src.close()
    with target.open("rb+") as fh:
        os.fsync(fh.fileno())


def _backup_postgres(url: str, target: Path, progress: Progress) -> None:
    pg_dump = _tool("pg_dump")
    uri, env = _libpq(url)
    progress("database: pg_dump (custom format) ...")
    _private_file(target)
    _run_tool([pg_dump, "--format=custom", "--no-owner", "--no-privileges",
               f"--file={target}", f"--dbname={uri}"], env, "pg_dump")
    target.chmod(0o600)
    progress(f"database: {target.stat().st_size} bytes dumped")


def _skipped(name: str) -> bool:
    return name.startswith(_SKIP_PREFIXES) or name.endswith(_SKIP_SUFFIXES)


def _backup_gnupg(home: Path, target: Path, progress: Progress) -> int:
    progress(f"gnupg home: archiving {home}")
    count = 0

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        nonlocal count
        if _skipped(Path(info.name).name) or not (info.isfile() or info.isdir()):
            return None
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        count += 1
        return info

    _private_file(target)
    with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(home, arcname="gnupg", recursive=True, filter=keep)
    with target.open("rb+") as fh:
        os.fsync(fh.fileno())
    progress(f"gnupg home: {count} entries archived")
    return count


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- restore ---------------------------------------------------------------------------------

def read_manifest(source: Path) -> dict[str, Any]:
    """The manifest of the backup in ``source``, with every file's SHA-256 checked."""
    if not source.is_dir():
        raise BackupError(f"{source} is not a directory: name a directory that "
                          "`seclistd backup` wrote", _EXIT_USAGE)
    try:
        manifest = json.loads((source / MANIFEST).read_text())
    except FileNotFoundError as exc:
        raise BackupError(f"{source} has no {MANIFEST}: not a seclistd backup, or an "
                          "unfinished one; name a directory `seclistd backup` completed",
                          _EXIT_USAGE) from exc
    except (OSError, ValueError) as exc:
        raise BackupError(f"{source / MANIFEST} cannot be read as JSON: the backup is "
                          "damaged; use another one") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT \
            or not isinstance(manifest.get("files"), dict) \
            or not isinstance(manifest.get("database"), dict):
        raise BackupError(f"{source / MANIFEST} is not a manifest of format {FORMAT}: "
                          "use a backup made by this seclistd")
    gnupg = manifest.get("gnupg")
    if not all(isinstance(v, str) for v in (manifest["database"].get("kind"),
                                            manifest["database"].get("file"))) \
            or not isinstance(gnupg, dict | None) \
            or not isinstance((gnupg or {}).get("file"), str | None) \
            or not isinstance(manifest.get("schema_revision"), str | None):
        raise BackupError(f"{source / MANIFEST} has fields of the wrong kind: the manifest "
                          "was altered; use another backup")
    for name, entry in manifest["files"].items():
        if not isinstance(name, str) or "/" in name or name.startswith(".") \
                or not isinstance(entry, dict):
            raise BackupError(f"{source / MANIFEST} names a file {name!r} outside the "
                              "backup: the manifest was altered; use another backup")
        path = source / name
        if not path.is_file():
            raise BackupError(f"{path} is missing: the backup is incomplete; use another one")
        if sha256_of(path) != entry.get("sha256"):
            raise BackupError(f"{path} does not match the SHA-256 in {MANIFEST}: it was "
                              "damaged or altered; restore nothing from it, use another "
                              "backup")
    return manifest


def restore(settings: Settings, source: Path, force: bool, progress: Progress) -> Restored:
    manifest = read_manifest(source)
    kind = kind_of(settings.database.url)
    saved_kind = manifest["database"].get("kind")
    db_file = manifest["database"].get("file")
    if saved_kind != kind:
        raise BackupError(f"the backup holds a {saved_kind} database and database.url names "
                          f"{kind}: restore it into a {saved_kind} database", _EXIT_USAGE)
    if db_file not in manifest["files"]:
        raise BackupError(f"{MANIFEST} names no database file: use another backup")
    revision = manifest.get("schema_revision")
    if revision not in db.REVISIONS:
        raise BackupError(f"the backup's schema {revision} is not one this seclistd knows "
                          f"(latest {db.REVISIONS[-1]}): restore it with the seclistd "
                          f"version that made it ({manifest.get('seclistd_version')})")
    gnupg_file = (manifest.get("gnupg") or {}).get("file")
    if gnupg_file is not None and gnupg_file not in manifest["files"]:
        raise BackupError(f"{MANIFEST} names no GnuPG archive: use another backup")
    home = Path(settings.gnupg.home)
    # Every refusal before anything is written.
    if not force:
        _refuse_if_in_use(settings.database.url, kind, home if gnupg_file else None)
    staging = None
    if gnupg_file:
        _check_archive(source / gnupg_file)
        # Unpacked before the database is touched: a GnuPG home that cannot be written
        # refuses the restore while nothing is changed yet.
        staging = _stage_gnupg(source / gnupg_file, home, progress)
    try:
        return _apply(settings, manifest, kind, source / db_file, force, staging, home,
                      str(revision), progress)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def _apply(settings: Settings, manifest: dict[str, Any], kind: str, saved: Path,
           force: bool, staging: Path | None, home: Path, revision: str,
           progress: Progress) -> Restored:
    source = saved
    if kind == "sqlite":
        _restore_sqlite(source, db.sqlite_file(settings.database.url), progress)
    else:
        _restore_postgres(source, settings.database.url, force, progress)
    engine = db.make_engine(settings.database.url)
    try:
        now_revision = db.schema_revision(engine) or ""
        if now_revision != db.REVISIONS[-1]:
            progress(f"database: schema {now_revision} is older than this seclistd's "
                     f"{db.REVISIONS[-1]}: migrating")
            try:
                db.migrate(settings.database.url)
            except Exception as exc:  # noqa: BLE001 - said in one line
                raise BackupError(f"the database was restored at schema {now_revision} but "
                                  f"cannot be migrated ({exc.__class__.__name__}): run "
                                  "`seclistd migrate`") from exc
            now_revision = db.schema_revision(engine) or ""
        counts = _count_rows(engine)
    finally:
        engine.dispose()

    previous, entries = None, 0
    if staging is not None:
        previous, entries = _swap_in_gnupg(staging, home, progress)
    return Restored(database=_label(settings.database.url), kind=kind,
                    revision_saved=str(revision), revision_now=now_revision,
                    created_at=str(manifest.get("created_at")), counts=counts,
                    gnupg_home=str(home) if staging is not None else "", gnupg_files=entries,
                    previous_gnupg_home=previous)


def _label(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _refuse_if_in_use(url: str, kind: str, home: Path | None) -> None:
    if _database_has_tables(url, kind):
        raise BackupError(f"database {_label(url)} is not empty: restore into a new "
                          "database, or add --force to replace its contents (stop the "
                          "daemon first)")
    if home is not None and home.exists() and any(home.iterdir()):
        raise BackupError(f"gnupg home {home} is not empty: restore into a new "
                          "location, or add --force to replace it (the old one is kept "
                          "beside it)")


def _database_has_tables(url: str, kind: str) -> bool:
    if kind == "sqlite":
        path = db.sqlite_file(url)
        if path is None or not path.exists() or path.stat().st_size == 0:
            return False
    engine = db.make_engine(url)
    try:
        return bool(inspect(engine).get_table_names())
    except Exception as exc:  # noqa: BLE001 - any connection failure reads the same
        raise BackupError(f"cannot connect to database {_label(url)} "
                          f"({exc.__class__.__name__}): check database.url and that the "
                          "server runs (create the database first)") from exc
    finally:
        engine.dispose()


def _check_archive(path: Path) -> None:
    try:
        with tarfile.open(path, "r") as tar:
            for info in tar.getmembers():
                name = info.name
                if not (name == "gnupg" or name.startswith("gnupg/")) or ".." in \
                        name.split("/") or not (info.isfile() or info.isdir()):
                    raise BackupError(f"{path} holds {name!r}, which is not part of a "
                                      "GnuPG home: use another backup")
    except tarfile.TarError as exc:
        raise BackupError(f"{path} is not a readable tar archive: use another "
                          "backup") from exc


def _restore_sqlite(saved: Path, target: Path | None, progress: Progress) -> None:
    assert target is not None
    progress(f"database: restoring into {target} (SQLite online backup)")
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        _private_file(target)
    src = sqlite3.connect(f"{saved.absolute().as_uri()}?mode=ro", uri=True)
    dst = sqlite3.connect(target, timeout=db.BUSY_TIMEOUT_MS / 1000)
    try:
        src.backup(dst)
        dst.execute("PRAGMA journal_mode=WAL")
        problems = dst.execute("PRAGMA integrity_check").fetchone()
        if not problems or problems[0] != "ok":
            raise BackupError(f"the restored database fails SQLite's integrity check "
                              f"({problems and problems[0]}): use another backup")
    except sqlite3.Error as exc:
        raise BackupError(f"cannot restore the SQLite database ({exc}); check that "
                          f"{target.parent} is writable") from exc
    finally:
        dst.close()
        src.close()
    target.chmod(0o600)


def _restore_postgres(saved: Path, url: str, force: bool, progress: Progress) -> None:
    pg_restore = _tool("pg_restore")
    uri, env = _libpq(url)
    progress(f"database: pg_restore into {_label(url)} ...")
    args = [pg_restore, "--no-owner", "--no-privileges", "--exit-on-error",
            "--single-transaction", f"--dbname={uri}"]
    if force:
        args += ["--clean", "--if-exists"]
    _run_tool([*args, str(saved)], env, "pg_restore")
    progress("database: restored")


def _stage_gnupg(archive: Path, home: Path, progress: Progress) -> Path:
    """Unpack the archive into a new directory beside ``home`` (same file system, so the
    swap is a rename); the caller removes it."""
    progress(f"gnupg home: unpacking beside {home}")
    try:
        home.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".restore-", dir=home.parent))
    except OSError as exc:
        raise BackupError(f"cannot create the GnuPG home {home} ({exc.strerror}): "
                          "correct gnupg.home or make its directory writable by this user; "
                          "nothing was restored") from exc
    try:
        with tarfile.open(archive, "r") as tar:
            tar.extractall(staging, members=tar.getmembers(), filter="data")
        (staging / "gnupg").chmod(0o700)
    except (OSError, tarfile.TarError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise BackupError(f"cannot unpack the GnuPG home beside {home} "
                          f"({exc.__class__.__name__}): check the disk has room; nothing "
                          "was restored") from exc
    return staging


def _swap_in_gnupg(staging: Path, home: Path, progress: Progress) -> tuple[str | None, int]:
    """Put the unpacked home in place; an existing home with data is kept as
    ``HOME.before-restore-N``."""
    unpacked = staging / "gnupg"
    previous = None
    if home.exists():
        if any(home.iterdir()):
            subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"],
                           capture_output=True, check=False)
            n = 1
            while home.with_name(f"{home.name}.before-restore-{n}").exists():
                n += 1
            aside = home.with_name(f"{home.name}.before-restore-{n}")
            home.rename(aside)
            previous = str(aside)
        else:
            home.rmdir()
    unpacked.rename(home)
    entries = sum(1 for _ in home.rglob("*"))
    progress(f"gnupg home: {entries} entries restored")
    return previous, entries
