"""Benchmark: an embargoed notice to N list members, each copy encrypted to its member's own
key and signed by the project key, against a bare loop of gpg, in the same run.

Set up once, not timed: N member keys and a project key (ed25519/cv25519 by default, or
RSA with ``--key-type rsa``: the same type on both sides), the members' public keys imported
into the project's GnuPG home, N active list members with their keys pinned, and an aiosmtpd
sink in a process of its own that writes each mail it accepts to a file.

Timed, each ``--repeat`` times (the two sides alternate which goes first):

- **seclistd**: one transaction enqueuing one confidential mail per member with
  ``member_mail.mail_member`` (what the embargoed notice does), then ``relay.drain`` until
  every row is sent: PGP/MIME per member, sealed in parallel by ``--workers`` threads (default
  one per core), sent over one SMTP connection, each row marked sent in its own transaction.
- **bare**: a loop of sequential ``gpg --sign --encrypt -r FINGERPRINT`` (one process per
  member, same home, same keys) and one smtplib connection sending all N, nothing stored.

After each run, not timed: the sink holds exactly N mails, one per member, each
multipart/encrypted to that member's encryption subkey alone; the first and the last are
decrypted with the members' keys. Medians are compared.

    .venv/bin/python bench/fanout.py [--n 100] [--repeat 5] [--key-type ed25519|rsa]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import smtplib
import statistics
import subprocess
import sys
import tempfile
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import func, select  # noqa: E402 - after the path is set

from bench.timing import timed  # noqa: E402
from seclistd import config, db, relay  # noqa: E402
from seclistd.list_models import Member  # noqa: E402
from seclistd.mail.pgpmime import encrypted_payload  # noqa: E402
from seclistd.models import Outbox  # noqa: E402
from seclistd.packets import recipient_key_ids  # noqa: E402
from seclistd.workflows import member_mail, member_states  # noqa: E402
from tests.components import free_port, wait_port, write_config  # noqa: E402

PROJECT = "security@example.org"
SUBJECT = "[EXAMPLE-2026-0042] Embargoed: heap overflow in the config parser"
BODY = ("This notice is under embargo until Thursday 2026-12-10 14:00 UTC "
        "(09:00 America/New_York).\n\n"
        "Overview: the config parser in 1.4.2 overflows a heap buffer on a crafted file; a "
        "remote attacker who can supply a config can run code.\n\n"
        "Fixed in 1.4.3; the patch is below. You may prepare and test updated packages, and "
        "share them with your own security team; you may not publish them, the patch, or "
        "anything that points at the flaw before the date. Tell us at once if it leaks.\n\n"
        + "".join(f"+        if (len > CFG_MAX_{i}) return -EINVAL;  /* bound check {i} */\n"
                  for i in range(40)))

# The sink: an aiosmtpd server in a process of its own, writing each accepted mail to a file
# named by its arrival number and recipient (so the timed process shares no core's GIL).
SINK = r'''
import asyncio, sys, threading
from pathlib import Path
from aiosmtpd.controller import Controller
out, port = Path(sys.argv[1]), int(sys.argv[2])
count = [0]
class Handler:
    async def handle_DATA(self, server, session, envelope):
        count[0] += 1
        for rcpt in envelope.rcpt_tos:
            (out / f"{count[0]:06d}-{rcpt}").write_bytes(envelope.original_content
                                                        or envelope.content)
        return "250 OK"
controller = Controller(Handler(), hostname="127.0.0.1", port=port)
controller.start()
threading.Event().wait()
'''


def gpg(home: Path, *args: str, data: bytes = b"") -> bytes:
    done = subprocess.run(["gpg", "--homedir", str(home), "--batch", "--yes",
                           "--pinentry-mode", "loopback", "--passphrase", "", *args],
                          input=data, capture_output=True)
    if done.returncode != 0:
        raise RuntimeError(f"gpg {' '.join(args[:3])} failed: {done.stderr.decode()[-500:]}")
    return done.stdout


def key_parameters(key_type: str, name: str, email: str) -> str:
    kind = ("Key-Type: RSA\nKey-Length: 3072\nSubkey-Type: RSA\nSubkey-Length: 3072\n"
            if key_type == "rsa" else
            "Key-Type: EDDSA\nKey-Curve: ed25519\nSubkey-Type: ECDH\nSubkey-Curve: cv25519\n")
    return (f"{kind}Name-Real: {name}\nName-Email: {email}\nExpire-Date: 0\n%no-protection\n"
            "%commit\n")


def listing(home: Path, secret: bool = False) -> list[list[str]]:
    out = gpg(home, "--with-colons", "--list-secret-keys" if secret else "--list-keys")
    return [line.split(":") for line in out.decode().splitlines()]


def encryption_subkeys(home: Path) -> dict[str, str]:
    """Member address -> the key ID of its encryption subkey."""
    found, address = {}, ""
    for record in listing(home):
        if record[0] == "pub":
            address = ""
        elif record[0] == "uid" and not address:
            address = record[9].rpartition("<")[2].rstrip(">").lower()
        elif record[0] == "sub" and "e" in record[11]:
            found[address] = record[4].upper()
    return found


def make_keys(work: Path, n: int, key_type: str) -> tuple[Path, str, Path, dict[str, str]]:
    """(project home, project fingerprint, members' home, address -> fingerprint)."""
    project, members = work / "p", work / "m"
    for home in (project, members):
        home.mkdir(mode=0o700)
    gpg(project, "--gen-key", data=key_parameters(key_type, "Example security team",
                                                  PROJECT).encode())
    project_fpr = next(r[9] for r in listing(project, secret=True) if r[0] == "fpr")
    params = "".join(key_parameters(key_type, f"Distro {i}", address(i)) for i in range(n))
    gpg(members, "--gen-key", data=params.encode())
    fprs: dict[str, str] = {}
    current = ""
    for record in listing(members):
        if record[0] == "pub":
            current = "pending"
        elif record[0] == "fpr" and current == "pending":
            current = record[9]
        elif record[0] == "uid" and current not in ("", "pending"):
            fprs[record[9].rpartition("<")[2].rstrip(">").lower()] = current
            current = ""
    assert len(fprs) == n, f"made {len(fprs)} member keys, expected {n}"
    gpg(project, "--import", data=gpg(members, "--armor", "--export"))
    gpg(members, "--import", data=gpg(project, "--armor", "--export", project_fpr))
    return project, project_fpr, members, fprs


def address(i: int) -> str:
    return f"security@distro{i}.example"


def start_sink(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    sink = subprocess.Popen([sys.executable, "-c", SINK, str(directory), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return sink, port


def received(directory: Path) -> list[tuple[str, bytes]]:
    return [(path.name.partition("-")[2], path.read_bytes())
            for path in sorted(directory.iterdir())]


def clear(directory: Path) -> None:
    for path in directory.iterdir():
        path.unlink()


class Seclistd:
    """The seclistd side: a configuration, a database and N pinned members."""

    def __init__(self, work: Path, project: Path, project_fpr: str, fprs: dict[str, str],
                 sink_port: int, workers: int | None):
        work.mkdir()
        self.settings = config.load(str(write_config(
            work, relay_port=sink_port, gnupg_home=project, gnupg_key=project_fpr)))
        db.migrate(self.settings.database.url)
        self.engine = db.make_engine(self.settings.database.url)
        self.factory = db.session_factory(self.engine)
        self.workers = workers
        now = self.now()
        with db.transaction(self.factory) as session:
            for i, (email, fpr) in enumerate(fprs.items()):
                member_states.add_member(session, list_name="distributors", email=email,
                                         organization=f"Distro {i}", actor="bench", now=now,
                                         fingerprint=fpr)

    @staticmethod
    def now() -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    def notify(self, limit: int | None = None) -> None:
        """Enqueue the notice to every active member (or the first ``limit``) and relay it."""
        with db.transaction(self.factory) as session:
            members = session.scalars(select(Member).where(Member.state == "active")
                                      .order_by(Member.id).limit(limit)).all()
            for member in members:
                member_mail.mail_member(session, self.now(), self.settings, member,
                                        kind="embargo_notice", subject=SUBJECT, body=BODY)
        transport = relay.make_transport(self.settings.relay)
        try:
            relay.drain(self.factory, self.settings.relay, transport, self.now,
                        relay.lease_owner(), seal=relay.sealer(self.settings),
                        workers=self.workers)
        finally:
            transport.close()

    def unsent(self) -> int:
        with self.factory() as session:
            return session.scalar(select(func.count()).select_from(Outbox)
                                  .where(Outbox.status != "sent")) or 0


def bare(project: Path, project_fpr: str, fprs: dict[str, str], sink_port: int) -> None:
    """What a script would do: sign and encrypt per member with gpg, send over one connection."""
    copies = []
    for email, fpr in fprs.items():
        inner = f"Content-Type: text/plain; charset=utf-8\r\n\r\n{BODY}".encode()
        armored = subprocess.run(
            ["gpg", "--homedir", str(project), "--batch", "--trust-model", "always", "--armor",
             "--sign", "-u", project_fpr, "--encrypt", "-r", fpr], input=inner,
            capture_output=True, check=True).stdout
        mail = EmailMessage()
        mail["From"], mail["To"], mail["Subject"] = PROJECT, email, "[EXAMPLE-2026-0042] ..."
        mail.set_content(armored.decode("ascii"))  # inline PGP: what a short script sends
        copies.append((email, mail.as_bytes(policy=policy.SMTP)))
    with smtplib.SMTP("127.0.0.1", sink_port) as smtp:
        for email, raw in copies:
            smtp.sendmail(PROJECT, [email], raw)


def check_seclistd(got: list[tuple[str, bytes]], subkeys: dict[str, str], members: Path) -> None:
    """N copies, one per member, each encrypted to that member's subkey alone; the first and
    the last open with the members' keys and carry the notice."""
    assert sorted(rcpt for rcpt, _ in got) == sorted(subkeys), "not one copy per member"
    for rcpt, raw in got:
        message = message_from_bytes(raw, policy=policy.default)
        assert message.get_content_type() == "multipart/encrypted", rcpt
        payload = encrypted_payload(raw)
        assert payload is not None and recipient_key_ids(payload[0]) == [subkeys[rcpt]], rcpt
    for _rcpt, raw in (got[0], got[-1]):
        payload = encrypted_payload(raw)
        assert payload is not None
        assert b"overflows a heap buffer" in gpg(members, "--decrypt", data=payload[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--key-type", choices=("ed25519", "rsa"), default="ed25519")
    parser.add_argument("--workers", type=int, default=None,
                        help="sealing threads (default: one per core)")
    args = parser.parse_args()
    if args.n < 1 or args.repeat < 1:
        print("--n and --repeat must be at least 1", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="fan", dir="/tmp"))  # short: gpg's agent socket
    inbox = work / "sink"
    inbox.mkdir()
    sink, port = start_sink(inbox)
    homes: list[Path] = []
    try:
        print(f"making {args.n + 1} {args.key_type} keys (not timed) ...", file=sys.stderr)
        project, project_fpr, members, fprs = make_keys(work, args.n, args.key_type)
        homes = [project, members]
        subkeys = {a: k for a, k in encryption_subkeys(members).items() if a in fprs}
        ours = Seclistd(work / "s", project, project_fpr, fprs, port, args.workers)
        # Warm up, not timed: gpg-agent up with the project key loaded, gpg --version run.
        ours.notify(limit=1)
        bare(project, project_fpr, dict(list(fprs.items())[:1]), port)
        clear(inbox)
        times: dict[str, list[float]] = {"bare": [], "seclistd": []}
        for r in range(args.repeat):
            order = ("bare", "seclistd") if r % 2 == 0 else ("seclistd", "bare")
            for side in order:
                if side == "bare":
                    times[side].append(timed(lambda: bare(project, project_fpr, fprs, port)))
                    assert len(received(inbox)) == args.n
                else:
                    times[side].append(timed(ours.notify))
                    assert ours.unsent() == 0, "seclistd left rows unsent"
                    check_seclistd(received(inbox), subkeys, members)
                clear(inbox)
                print(f"run {r + 1} {side:9s} {times[side][-1]:6.3f} s", file=sys.stderr)
        ours.engine.dispose()
    finally:
        sink.terminate()
        sink.wait()
        for home in homes:
            subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"],
                           capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    b, s = statistics.median(times["bare"]), statistics.median(times["seclistd"])
    print(json.dumps({"n": args.n, "key_type": args.key_type,
                      "workers": args.workers or relay.seal_workers(),
                      "bare_s": round(b, 3), "seclistd_s": round(s, 3),
                      "ratio": round(s / b, 2), "bare_all": [round(t, 3) for t in times["bare"]],
                      "seclistd_all": [round(t, 3) for t in times["seclistd"]]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
