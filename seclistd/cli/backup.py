"""`seclistd backup DIR` and `seclistd restore DIR [--force]`: the command-line side of
`seclistd.backup` (progress on stderr, what was saved or restored on stdout or as JSON)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from seclistd.cli.common import EXIT_OK, Add, CliError, Parser, emit, load_settings, now


def _progress(line: str) -> None:
    print(f"seclistd: {line}", file=sys.stderr, flush=True)


def _version() -> str:
    from seclistd.cli import version

    return version()


def cmd_backup(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    dest = Path(args.dir)
    try:
        manifest = _backup_module().backup(settings, dest, now(), _progress, _version())
    except _backup_module().BackupError as exc:
        raise CliError(str(exc), exc.code) from exc
    doc = {"directory": str(dest.absolute()), **manifest}

    def text(d: dict[str, Any]) -> str:
        counts = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in
                           d["database"]["counts"].items())
        keys = "the GnuPG home" if d["gnupg"]["file"] else "no GnuPG home (none found)"
        return (f"backup written to {d['directory']}: {d['database']['kind']} database at "
                f"schema {d['schema_revision']} ({counts}) and {keys}; restore it with "
                f"`seclistd restore {d['directory']}`")

    emit(args, doc, text)
    return EXIT_OK


def cmd_restore(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    try:
        done = _backup_module().restore(settings, Path(args.dir), args.force, _progress)
    except _backup_module().BackupError as exc:
        raise CliError(str(exc), exc.code) from exc
    doc = {"directory": str(Path(args.dir).absolute()), "created_at": done.created_at,
           "database": {"url": done.database, "kind": done.kind,
                        "schema_revision_saved": done.revision_saved,
                        "schema_revision": done.revision_now, "counts": done.counts},
           "gnupg": {"home": done.gnupg_home or None, "entries": done.gnupg_files,
                     "previous_home": done.previous_gnupg_home}}

    def text(d: dict[str, Any]) -> str:
        db_doc = d["database"]
        counts = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in db_doc["counts"].items())
        lines = [f"restored the backup of {d['created_at']} from {d['directory']}:",
                 f"  database {db_doc['url']} ({db_doc['kind']}): {counts}"]
        if db_doc["schema_revision_saved"] != db_doc["schema_revision"]:
            lines.append(f"  migrated from schema {db_doc['schema_revision_saved']} to "
                         f"{db_doc['schema_revision']}")
        if d["gnupg"]["home"]:
            lines.append(f"  gnupg home {d['gnupg']['home']}: {d['gnupg']['entries']} "
                         "entries (keys, trust, the project key's secret)")
        else:
            lines.append("  the backup held no GnuPG home: import the keys again")
        if d["gnupg"]["previous_home"]:
            lines.append(f"  the GnuPG home it replaced is kept in "
                         f"{d['gnupg']['previous_home']}")
        lines.append("check it with `seclistd doctor`, then start the daemon")
        return "\n".join(lines)

    emit(args, doc, text)
    return EXIT_OK


def register(sub: Any, add: Add, parents: list[Parser]) -> None:
    p = add("backup", cmd_backup, "back up the database and the GnuPG home into DIR", sub)
    p.add_argument("dir", metavar="DIR",
                   help="a new or empty directory (created 0700)")
    p = add("restore", cmd_restore,
            "restore the database and the GnuPG home from a backup in DIR", sub)
    p.add_argument("dir", metavar="DIR", help="a directory `seclistd backup` wrote")
    p.add_argument("--force", action="store_true",
                   help="replace a database or GnuPG home that already holds data")


def _backup_module() -> Any:
    """``seclistd.backup``, imported when a backup or restore runs: it loads sqlite3 and
    tarfile, which no other command (the daemon least of all) should pay for at start-up."""
    from seclistd import backup

    return backup
