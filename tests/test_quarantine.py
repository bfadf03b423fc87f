"""Quarantine is never silent (issue 8, item 9): the team is told of each quarantined
message without its content, in a digest past a few per hour, never because of our own mail;
operators see a quarantined message faithfully and safely, get its exact bytes, release it as
a report with the sender they give, delete it with an audit record, and get a case's messages
and attachments out."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path

from sqlalchemy import select

from seclistd import daemon, db
from seclistd.intake.store import accept
from seclistd.models import Message, Outbox, QuarantineDeletion
from seclistd.workflows import notices
from tests.components import MACHINE_CLOCK, Sink, cli, faketime_env, report
from tests.conftest import Env, make_env
from tests.pgp import encrypted_mail, with_key_attached
from tests.test_openpgp import REPORTER, World, world  # noqa: F401 - the fixture

NOW = dt.datetime(2026, 11, 19, 15, 0, tzinfo=dt.UTC)
BAD_FROM = b"From: alice@example.org)<bob@example.org>"


def unreadable(i: int, body: str = "the secret payload") -> bytes:
    """A report whose From cannot be read (CVE-2023-27043 shape): it is quarantined."""
    return report(i, body=body).replace(f"From: Reporter {i} <reporter{i}@example.net>".encode(),
                                        BAD_FROM)


def ingest(env: Env, raw: bytes, now: dt.datetime = NOW):
    return accept(env.factory, env.settings, raw, source="ingest", now=now)


def deliver(env: Env, now: dt.datetime = NOW) -> int:
    return daemon.drain_relay(env.settings, env.factory, lambda: now)


def quarantine_mail(sink: Sink) -> list:
    return [r.message for r in sink.to("alice@example.org")
            if "uarantine" in r.message["Subject"]]


def cli_bytes(config: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """The CLI with its standard output as bytes (for the raw-bytes commands)."""
    return subprocess.run([sys.executable, "-m", "seclistd", "--config", str(config), *args],
                          input=b"", capture_output=True, timeout=120,
                          env={**os.environ, **faketime_env(MACHINE_CLOCK)})


def ingested_id(done: subprocess.CompletedProcess[str]) -> int:
    match = re.search(r"quarantined as message (\d+)", done.stdout)
    assert match, (done.stdout, done.stderr)
    return int(match.group(1))


def new_case_id(done: subprocess.CompletedProcess[str]) -> str:
    match = re.search(r"new case (\S+)", done.stdout)
    assert match, (done.stdout, done.stderr)
    return match.group(1)


# --- the team is told --------------------------------------------------------------------

def test_a_quarantined_message_is_told_to_the_team_without_its_content(env: Env, sink: Sink):
    outcome = ingest(env, unreadable(1, body="SECRET-PAYLOAD-4711 exploit details"))
    assert outcome.status == "quarantined"
    with env.factory() as session:  # the notice is committed with the quarantine row
        [row] = session.scalars(select(Outbox).where(Outbox.kind == "quarantined")).all()
        assert row.to_addr == "alice@example.org" and row.case_id is None
    deliver(env)
    [notice] = quarantine_mail(sink)
    assert notice["Subject"] == f"Quarantined: message {outcome.id} from an unreadable sender"
    assert notice["Auto-Submitted"] == "auto-generated"
    body = notice.get_body().get_content()
    assert f"seclistd quarantine show {outcome.id}" in body
    assert "From header is malformed" in body  # the reason
    assert f"seclistd quarantine release {outcome.id} --as-report --from ADDRESS" in body
    assert "SECRET-PAYLOAD" not in body and "exploit" not in body
    assert "Vulnerability number 1" not in body  # not even the subject


def test_quarantine_notices_collapse_into_a_digest_past_the_threshold(tmp_path: Path,
                                                                       sink: Sink):
    env = make_env(tmp_path, relay_port=sink.port,
                   extra="[autoreply]\nquarantine_digest_after = 2\n")
    outcomes = [ingest(env, unreadable(i), NOW + dt.timedelta(minutes=i)) for i in range(4)]
    deliver(env, NOW + dt.timedelta(minutes=5))
    assert [m["Subject"] for m in quarantine_mail(sink)] == [
        f"Quarantined: message {o.id} from an unreadable sender" for o in outcomes[:2]]
    with db.transaction(env.factory) as session:
        assert notices.sweep(session, NOW + dt.timedelta(minutes=6), env.settings) == 2
    deliver(env, NOW + dt.timedelta(minutes=6))
    [digest] = [m for m in quarantine_mail(sink) if m["Subject"].startswith("Digest")]
    assert digest["Subject"] == "Digest: 2 messages quarantined"
    body = digest.get_body().get_content()
    lines = [line.split()[0] for line in body.splitlines() if line[:1].isdigit()]
    assert lines == [str(o.id) for o in outcomes[2:]]
    assert "secret payload" not in body
    # An hour later, quarantined messages are told one by one again.
    late = ingest(env, unreadable(9), NOW + dt.timedelta(hours=2))
    deliver(env, NOW + dt.timedelta(hours=2))
    assert quarantine_mail(sink)[-1]["Subject"].startswith(f"Quarantined: message {late.id} ")


def test_no_notice_because_of_our_own_mail(env: Env, sink: Sink):
    first = ingest(env, unreadable(1))
    deliver(env)
    with env.factory() as session:
        notice_id = session.scalar(select(Outbox.message_id).where(Outbox.kind == "quarantined"))
    # The notice bounces (the DSN names it), and an out-of-office answers it.
    dsn = (
        "From: Mail Delivery System <MAILER-DAEMON@mx.example.org>\r\n"
        "To: security@example.org\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        "Message-ID: <dsn-q@mx.example.org>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain\r\n\r\nCould not deliver.\r\n"
        "--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx\r\n\r\n"
        "Final-Recipient: rfc822; alice@example.org\r\nAction: failed\r\nStatus: 5.2.2\r\n"
        f"\r\n--b\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: {notice_id}\r\n"
        f"Subject: Quarantined: message {first.id}\r\n\r\n--b--\r\n").encode()
    away = report(2, sender="alice@example.org", subject="Out of office",
                  headers=f"Auto-Submitted: auto-replied\r\nIn-Reply-To: {notice_id}\r\n")
    loop = report(3, sender="security@example.org")
    outcomes = [ingest(env, raw) for raw in (dsn, away, loop)]
    assert [o.status for o in outcomes] == ["quarantined"] * 3
    assert [o.route for o in outcomes] == ["bounce", "auto_reply", "loop"]
    assert deliver(env) == 0
    assert len(quarantine_mail(sink)) == 1
    # A bounce that answers nothing of ours is still told.
    stranger = dsn.replace(notice_id.encode(), b"<spam-1@elsewhere.example>").replace(
        b"dsn-q@", b"dsn-r@")
    assert ingest(env, stranger).status == "quarantined"
    assert deliver(env) == 1


# --- show, --raw, release --as-report, delete ----------------------------------------------

HOSTILE = (BAD_FROM + b"\r\nTo: security@example.org\r\nSubject: look\r\n"
           b"Message-ID: <hostile-1@example.net>\r\n\r\n"
           b"line one\r\nclear\x1b[2J\x1b]0;owned\x07screen\r\nlone\rcr\r\n"
           b"nul\x00 c1\xc2\x9b2J bad\xff utf8 \xe2\x80\xae\r\n")


def test_show_is_faithful_and_emits_no_terminal_control(env: Env):
    done = cli(env.path, "ingest", "-", input=HOSTILE)
    message = ingested_id(done)
    shown = cli(env.path, "quarantine", "show", str(message))
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert "\x1b" not in out and "\x07" not in out and "\r" not in out and "\x00" not in out
    assert "\x9b" not in out and "\u202e" not in out
    assert "\nline one\nclear\\x1b[2J\\x1b]0;owned\\x07screen\nlone\\rcr\n" in out
    assert "nul\\x00 c1\\x9b2J bad\\xff utf8 \\u202e" in out
    assert "?" not in out.split("\n\n", 1)[1]  # nothing replaced by a question mark
    assert "From header is malformed" in out


def test_show_raw_writes_the_exact_bytes(env: Env):
    message = ingested_id(cli(env.path, "ingest", "-", input=HOSTILE))
    done = cli_bytes(env.path, "quarantine", "show", str(message), "--raw")
    assert done.returncode == 0, done.stderr
    assert done.stdout == HOSTILE
    wrong = cli(env.path, "quarantine", "show", str(message), "--raw", "--json")
    assert wrong.returncode == 2 and "drop --json" in wrong.stderr


def test_release_as_report_with_the_sender_the_operator_gives(env: Env):
    message = ingested_id(cli(env.path, "ingest", "-", input=unreadable(1)))
    plain = cli(env.path, "quarantine", "release", str(message))
    assert plain.returncode == 1
    assert f"quarantine release {message} --as-report --from ADDRESS" in plain.stderr
    bad = cli(env.path, "quarantine", "release", str(message), "--as-report", "--from", "bob@")
    assert bad.returncode == 2 and "is not a mail address, expected local@domain" in bad.stderr
    alone = cli(env.path, "quarantine", "release", str(message), "--from", "bob@example.net")
    assert alone.returncode == 2 and "add --as-report" in alone.stderr
    nosender = cli(env.path, "quarantine", "release", str(message), "--as-report")
    assert nosender.returncode == 1 and "--from ADDRESS" in nosender.stderr
    for done in (plain, bad, alone, nosender):
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr

    done = cli(env.path, "quarantine", "release", str(message), "--as-report",
               "--from", "Bob@Example.NET")
    assert done.returncode == 0, done.stderr
    case_id = re.search(r"on case (\S+)", done.stdout).group(1)
    doc = json.loads(cli(env.path, "cases", "show", case_id, "--json").stdout)
    assert doc["reporter"] == "bob@example.net" and doc["state"] == "new"
    [event] = [e for e in doc["events"] if e["action"] == "released_as_report"]
    assert event["actor"].endswith("(cli)")
    assert "sender given as bob@example.net" in event["detail"]
    assert "From header is malformed" in event["detail"]
    assert json.loads(cli(env.path, "quarantine", "list", "--json").stdout) == []
    with env.factory() as session:  # the reporter gets the receipt with the case ID
        assert session.scalars(select(Outbox.to_addr).where(
            Outbox.kind == "receipt", Outbox.case_id == case_id)).all() == ["bob@example.net"]


def test_delete_removes_the_bytes_and_keeps_an_audit_record(env: Env):
    message = ingested_id(cli(env.path, "ingest", "-", input=unreadable(1)))
    done = cli(env.path, "quarantine", "delete", str(message), "--reason", "spam")
    assert done.returncode == 0, done.stderr
    sha = hashlib.sha256(unreadable(1)).hexdigest()
    assert sha in done.stdout
    with env.factory() as session:
        assert session.get(Message, message) is None
        [record] = session.scalars(select(QuarantineDeletion)).all()
    assert (record.message_id, record.sha256, record.reason) == (message, sha, "spam")
    assert record.actor.endswith("(cli)") and "From header is malformed" in \
        record.quarantine_reason
    assert json.loads(cli(env.path, "quarantine", "list", "--json").stdout) == []
    for args in (("show", str(message)), ("delete", str(message)),
                 ("release", str(message))):
        again = cli(env.path, "quarantine", *args)
        assert again.returncode == 1
        assert f"message {message} was deleted from quarantine" in again.stderr
        assert len(again.stderr.strip().splitlines()) == 1
    assert "no quarantined message 999" in cli(env.path, "quarantine", "delete", "999").stderr


# --- a case's messages and attachments --------------------------------------------------

def test_cases_raw_writes_a_message_of_the_case(env: Env):
    first = report(1)
    case_id = new_case_id(cli(env.path, "ingest", "-", input=first))
    second = report(2, sender="reporter1@example.net", subject=f"Re: [{case_id}] more")
    cli(env.path, "ingest", "-", input=second)
    done = cli_bytes(env.path, "cases", "raw", case_id)
    assert done.returncode == 0 and done.stdout == first
    doc = json.loads(cli(env.path, "cases", "show", case_id, "--json").stdout)
    numbers = [m["id"] for m in doc["messages"] if m["direction"] == "in"]
    assert cli_bytes(env.path, "cases", "raw", case_id, str(numbers[1])).stdout == second
    assert cli_bytes(env.path, "cases", "raw", case_id,
                     "<report-2@example.net>").stdout == second
    for args, text in (((case_id, "999"), f"message 999 is not on case {case_id}, expected "
                        f"one of {numbers[0]}, {numbers[1]}"),
                       ((case_id.replace("-0001", "-0099"),), "no case")):
        wrong = cli(env.path, "cases", "raw", *args)
        assert wrong.returncode == 1 and text in wrong.stderr, wrong.stderr
        assert len(wrong.stderr.strip().splitlines()) == 1


def with_attachments() -> bytes:
    msg = EmailMessage()
    msg["From"] = "Reporter 1 <reporter1@example.net>"
    msg["To"] = "security@example.org"
    msg["Subject"] = "Crash with attached proof"
    msg["Message-ID"] = "<attach-1@example.net>"
    msg.set_content("See the attached files.")
    msg.add_attachment(b"root:x:0:0\n", maintype="application", subtype="octet-stream",
                       filename="../../etc/passwd")
    msg.add_attachment(b"first poc\n", maintype="text", subtype="plain", filename="poc.txt")
    msg.add_attachment(b"second poc\n", maintype="text", subtype="plain", filename="poc.txt")
    msg.add_attachment(b"\x00\x01binary", maintype="application", subtype="octet-stream")
    msg.add_attachment(b"x", maintype="application", subtype="octet-stream",
                       filename="\x1b[31m.hidden")
    return msg.as_bytes()


def test_cases_attachments_are_written_under_safe_names(env: Env, tmp_path: Path):
    case_id = new_case_id(cli(env.path, "ingest", "-", input=with_attachments()))
    out = tmp_path / "out" / "files"
    out.mkdir(parents=True)
    (out / "passwd").write_bytes(b"was here first")
    done = cli(env.path, "cases", "attachments", case_id, "--output", str(out))
    assert done.returncode == 0, done.stderr
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    message = json.loads(cli(env.path, "cases", "show", case_id, "--json").stdout
                         )["messages"][0]["id"]
    assert files == {"passwd": b"was here first", "passwd-1": b"root:x:0:0\n",
                     "poc.txt": b"first poc\n", "poc-1.txt": b"second poc\n",
                     f"message{message}-part4.bin": b"\x00\x01binary",
                     "_[31m.hidden": b"x"}
    assert not (tmp_path / "etc").exists() and not (tmp_path / "out" / "etc").exists()
    assert all((p.stat().st_mode & 0o777) == 0o600 for p in out.iterdir() if p.name != "passwd")
    for name in files:
        if name != "passwd":
            assert f"wrote {out / name} (" in done.stdout
    assert "\x1b" not in done.stdout and "'../../etc/passwd'" in done.stdout
    assert f"{case_id}: 5 attachment(s) from 1 message(s)" in done.stdout

    again = json.loads(cli(env.path, "cases", "attachments", case_id, "-o", str(out),
                           "--json").stdout)
    assert [Path(w["path"]).name for w in again["written"]] == [
        "passwd-2", "poc-2.txt", "poc-3.txt", f"message{message}-part4-1.bin", "_[31m-1.hidden"]
    missing = cli(env.path, "cases", "attachments", case_id)
    assert missing.returncode == 2 and "--output" in missing.stderr
    unknown = cli(env.path, "cases", "attachments", "SEC-1999-0042", "--output", str(out))
    assert unknown.returncode == 1 and "no case SEC-1999-0042" in unknown.stderr


def test_attachments_of_an_encrypted_report_come_out_decrypted(world: World,  # noqa: F811
                                                               tmp_path: Path):
    key = world.reporter.export(world.reporter_fpr)
    armored = world.reporter.encrypt(with_key_attached("Overflow, my key attached.", key),
                                     world.project_fpr)
    outcome = world.ingest(encrypted_mail(REPORTER, "Vulnerability report", armored))
    out = tmp_path / "decrypted"
    done = cli(world.path, "cases", "attachments", outcome.case_id, "--output", str(out))
    assert done.returncode == 0, done.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {"key.asc": key}
