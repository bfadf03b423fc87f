"""`seclistd keys`: the OpenPGP keyrings in `gnupg.home` (see seclistd.crypto).

`generate` makes the project key and records it, so it is usable at once; `import` is the
operator's import into the project keyring; `list` shows both keyrings, the keys mail
offered marked as such.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from seclistd import config as config_mod
from seclistd.cli.common import (
    EXIT_OK,
    EXIT_USAGE,
    Add,
    CliError,
    Parser,
    emit,
    load_settings,
    table,
)
from seclistd.crypto import FINGERPRINT


def _keyring(settings: config_mod.Settings, create: bool = False) -> Any:
    """The keyring; only ``keys generate`` and ``keys import`` (``create``) may make the
    GnuPG home, the reading commands say how to get one."""
    from pathlib import Path

    from seclistd.crypto import keyring

    if not create and not Path(settings.gnupg.home).is_dir():
        raise CliError(f"no GnuPG home at {settings.gnupg.home}: `seclistd keys generate` "
                       "creates it with the project key (or set gnupg.home)")
    ring = keyring(settings.gnupg)
    if ring is None:
        raise CliError("gpg is not installed: apt-get install gnupg")
    return ring


def cmd_keys_generate(args: argparse.Namespace) -> int:
    from seclistd.crypto import CryptoError, uid_address

    settings = load_settings(args)
    ring = _keyring(settings, create=True)
    address = settings.project.security_address.lower()
    # The project keyring only: no mail writes there, so nothing here was planted.
    secret = ring.list_keys(secret=True)
    current = ring.project_key()
    existing = [k.fingerprint for k in secret if k.fingerprint == current] or [
        k.fingerprint for k in secret if any(uid_address(uid) == address for uid in k.uids)]
    if existing and not args.force:
        hint = ("it is the project key; `seclistd keys export` prints it"
                if existing[0] == current else f"set gnupg.key = \"{existing[0]}\" to use it")
        raise CliError(f"a secret key for {address} exists already ({existing[0]}): {hint};"
                       " pass --force to make another")
    print(f"generating an ed25519 key for {address} ...", file=sys.stderr)
    try:
        fpr = ring.generate(f"{settings.project.name} security team", address)
    except CryptoError as exc:
        raise CliError(str(exc)) from exc
    note = "the project key from now on; `seclistd keys export` prints it for the website"
    if settings.gnupg.key and settings.gnupg.key.upper() != fpr:
        note = (f"gnupg.key still names {settings.gnupg.key}: remove it (or set it to this "
                "fingerprint) to use the new key")
    emit(args, {"fingerprint": fpr, "project_key": ring.project_key() == fpr},
         lambda d: f"{d['fingerprint']}\n{note}")
    return EXIT_OK


def cmd_keys_import(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    ring = _keyring(settings, create=True)
    try:
        data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as exc:
        raise CliError(f"{args.file}: cannot read it ({exc.strerror}), expected an OpenPGP "
                       "key file") from exc
    fingerprints = ring.import_keys(data)
    if not fingerprints:
        raise CliError(f"{args.file}: no OpenPGP key in it, expected an armored or binary key")
    emit(args, {"imported": fingerprints}, lambda d: "\n".join(d["imported"]))
    return EXIT_OK


def cmd_keys_export(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    ring = _keyring(settings)
    if args.fingerprint and not FINGERPRINT.fullmatch(args.fingerprint.upper()):
        raise CliError(f"{args.fingerprint!r} is not a fingerprint, expected 40 (or 64) "
                       "hex digits as `seclistd keys list` shows them", EXIT_USAGE)
    fpr = args.fingerprint.upper() if args.fingerprint else ring.project_key()
    if not fpr:
        raise CliError("no project key yet: `seclistd keys generate` makes one (or set "
                       "gnupg.key to a key in `seclistd keys list`), or name a fingerprint",
                       EXIT_USAGE)
    from seclistd.crypto import CryptoError

    try:
        armored = ring.export(fpr)
    except CryptoError as exc:
        raise CliError(f"{exc}; `seclistd keys list` shows the keys") from exc
    emit(args, {"fingerprint": fpr, "key": armored}, lambda d: d["key"].rstrip("\n"))
    return EXIT_OK


def cmd_keys_list(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    rows = [k.as_dict() for k in _keyring(settings).list_keys()]
    for row in rows:
        row["uids"] = ", ".join(row["uids"]) if not args.json else row["uids"]
    emit(args, rows, lambda r: table(r, ["fingerprint", "secret", "keyring", "expires",
                                         "uids"], "no keys"))
    return EXIT_OK


def register(sub: Any, add: Add, parents: list[Parser]) -> None:
    keys = sub.add_parser("keys", help="the OpenPGP keyring", parents=parents)
    keys_sub = keys.add_subparsers(dest="action", required=True, parser_class=Parser)
    p = add("generate", cmd_keys_generate, "generate the project key (used at once: "
            "gnupg.key is needed only to choose another)", keys_sub)
    p.add_argument("--force", action="store_true", help="even if one exists already")
    p = add("import", cmd_keys_import, "import a public or secret key (FILE or -) into the "
            "project keyring", keys_sub)
    p.add_argument("file", metavar="FILE")
    p = add("export", cmd_keys_export, "print a public key (the project key by default)",
            keys_sub)
    p.add_argument("fingerprint", nargs="?", metavar="FPR")
    add("list", cmd_keys_list, "list the keys (keyring: project, or offered by mail)",
        keys_sub)
