"""The embargoed notice (issue 10, items 1 and 2), end to end with real gpg homes, real
SQLite and the relay delivering to an aiosmtpd sink: one copy per member and team member,
each encrypted to its recipient's key alone and carrying its own token; keyless members
and team members get nothing embargoed (held, the content-free note); the embargo's length
limits; rescheduling; ``cases show --json``; a signed ``X-EMBARGO`` with an attachment."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import re
import time
import uuid
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import select

from seclistd import config, daemon, db
from seclistd.embargo_models import Announcement, AnnouncementRecipient
from seclistd.intake.store import accept
from seclistd.models import Case, Outbox
from seclistd.workflows import announce, lifecycle, member_mail, member_states
from tests.components import MACHINE_CLOCK, Received, Sink, cli, report, write_config
from tests.pgp import Home, crlf, new_home, signed_mail

ALICE = "alice@example.org"  # team, with a key
BOB = "bob@example.org"  # team, no fingerprint on record
REPORTER = "rita@example.net"
MEMBERS = ("sec@distro-a.example", "sec@distro-b.example", "sec@distro-c.example")
KEYLESS = "sec@distro-d.example"
OUTSIDER = "mallory@example.net"
PUBLIC = "announce@example.org"
TEAM_TEXT = "The fix for the config parser overflow ships in 1.4.3; please review the patch."
PATCH = b"--- a/parser.c\n+++ b/parser.c\n@@ -1 +1 @@\n-char buf[16];\n+char buf[64];\n"
LISTS = f"""
[[lists]]
name = "distributors"
address = "distributors@example.org"
criteria = "oci"
max_embargo_days = 14
preferred_embargo_days = 7
public_addresses = ["{PUBLIC}"]
"""


@dataclasses.dataclass
class World:
    """The project, Alice (team), three members with keys, one without, and an outsider.
    Its clock is the machine's (gpg stamps signatures with it), read once and run on."""

    path: Path
    settings: config.Settings
    factory: object
    sink: Sink
    project: Home
    alice: Home
    alice_fpr: str
    members: dict[str, tuple[Home, str]]
    mallory: Home
    start: dt.datetime = dataclasses.field(default_factory=lambda: dt.datetime.now(dt.UTC))
    ticks: float = dataclasses.field(default_factory=time.monotonic)

    def now(self) -> dt.datetime:
        return self.start + dt.timedelta(seconds=time.monotonic() - self.ticks)

    def deliver(self) -> None:
        daemon.drain_relay(self.settings, self.factory, self.now)

    def cli(self, *args: str) -> object:
        return cli(self.path, *args, at=MACHINE_CLOCK)

    def confirmed_case(self) -> str:
        outcome = accept(self.factory, self.settings,
                         report(1, sender=REPORTER, subject="Heap overflow in the parser",
                                body="Version 1.4.2 overflows a heap buffer.\nSteps: poc.cfg"),
                         source="ingest", now=self.now())
        with db.transaction(self.factory) as session:
            for action in ("ack", "confirm"):
                lifecycle.act(session, self.now(), self.settings, outcome.case_id,
                              lifecycle.Request(action=action, text="Thanks."), ALICE)
        return outcome.case_id

    def homes(self) -> dict[str, Home]:
        found = {email: home for email, (home, _) in self.members.items()}
        return found | {ALICE: self.alice}


@contextlib.contextmanager
def make_world(tmp_path: Path, sink: Sink) -> Iterator[World]:
    homes = [new_home() for _ in range(2 + len(MEMBERS) + 1)]
    project, alice, mallory, *member_homes = homes
    try:
        project_fpr = project.generate("Example security team", "security@example.org")
        alice_fpr = alice.generate("Alice", ALICE)
        mallory.generate("Mallory", OUTSIDER)
        members = {}
        for email, home in zip(MEMBERS, member_homes, strict=True):
            fpr = home.generate(f"Security of {email}", email)
            project.gpg.import_keys(home.export(fpr))
            home.gpg.import_keys(project.export(project_fpr))
            members[email] = (home, fpr)
        project.gpg.import_keys(alice.export(alice_fpr))
        alice.gpg.import_keys(project.export(project_fpr))
        path = write_config(tmp_path, relay_port=sink.port, team=[ALICE, BOB],
                            gnupg_home=project.path, gnupg_key=project_fpr,
                            fingerprints={ALICE: alice_fpr}, extra=LISTS)
        settings = config.load(str(path))
        db.migrate(settings.database.url)
        engine = db.make_engine(settings.database.url)
        world = World(path, settings, db.session_factory(engine), sink, project, alice,
                      alice_fpr, members, mallory)
        with db.transaction(world.factory) as session:
            for email, (_, fpr) in members.items():
                member_states.add_member(session, list_name="distributors", email=email,
                                         organization=email.split("@")[1], actor="test",
                                         now=world.now(), fingerprint=fpr)
            member_states.add_member(session, list_name="distributors", email=KEYLESS,
                                     organization="Distro D", actor="test", now=world.now())
        world.deliver()
        sink.received.clear()  # the welcome mails of adding members
        yield world
        engine.dispose()
    finally:
        for home in homes:
            home.close()


@pytest.fixture
def world(tmp_path: Path, sink: Sink) -> Iterator[World]:
    with make_world(tmp_path, sink) as w:
        yield w


# --- helpers -------------------------------------------------------------------------------

def iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).replace(microsecond=0).isoformat()


def armored(received: Received) -> bytes:
    msg = received.message
    assert msg.get_content_type() == "multipart/encrypted"
    data = msg.get_payload()[1].get_payload(decode=True)
    assert isinstance(data, bytes)
    return data


def opened(received: Received, home: Home) -> EmailMessage:
    ok, plain = home.decrypt(armored(received))
    assert ok
    return message_from_bytes(plain, policy=policy.default)  # type: ignore[return-value]


def text_of(inner: EmailMessage) -> str:
    body = inner.get_body(("plain",))
    assert body is not None
    return body.get_content()


def notices(world: World, address: str) -> list[Received]:
    """The copies of embargoed notices that reached ``address`` (a notice's Message-ID
    carries its case and token)."""
    return [r for r in world.sink.to(address)
            if announce.token_in_message_id(r.message["Message-ID"])]


def token_of(text: str) -> str:
    match = re.search(r"This copy's token: ([0-9a-f]{32})", text)
    assert match, text
    return match.group(1)


def rows(world: World, kind: str) -> list[Outbox]:
    with world.factory() as session:
        return list(session.scalars(select(Outbox).where(Outbox.kind == kind)
                                    .order_by(Outbox.id)))


def embargo(world: World, case_id: str, until: dt.datetime, *extra: str):
    return world.cli("cases", "embargo", case_id, "--until", iso(until),
                     "--message", TEAM_TEXT, *extra)


# --- the notice ----------------------------------------------------------------------------

def test_each_member_gets_one_copy_only_its_key_opens(world: World, tmp_path: Path):
    case_id = world.confirmed_case()
    patch = tmp_path / "fix.patch"
    patch.write_bytes(PATCH)
    until = world.now() + dt.timedelta(days=3)
    result = embargo(world, case_id, until, "--attach", str(patch))
    assert result.returncode == 0, result.stderr
    assert "confirmed -> embargoed" in result.stdout
    assert "6 recipient(s): 4 queued, 2 held" in result.stdout  # 3 members, alice; keyless, bob
    weekday = until.astimezone(dt.UTC).strftime("%A")
    assert f"{weekday} " in result.stdout and "UTC" in result.stdout
    assert "America/New_York" in result.stdout
    assert [line for line in result.stderr.splitlines() if not line.startswith("note:")] == []
    world.deliver()

    tokens, message_ids = set(), set()
    for email, home in world.homes().items():
        [copy] = notices(world, email)  # exactly one, to this recipient alone
        assert copy.rcpt_tos == [email]
        assert TEAM_TEXT.encode() not in copy.raw and b"buf[64]" not in copy.raw
        assert copy.message["Subject"] == f"[{case_id}] ..."
        inner = opened(copy, home)
        text = text_of(inner)
        assert TEAM_TEXT in text and case_id in text
        assert "X-LEAK" in text and f"X-CASE: {case_id}" in text  # whom to tell of a leak
        assert until.astimezone(dt.UTC).strftime("%A %-d %B %Y, %H:%M UTC") in text
        token = token_of(text)
        assert copy.message["Message-ID"] == f"<{case_id}.{token}.seclistd@example.org>"
        assert announce.token_in_message_id(copy.message["Message-ID"]) == (case_id, token)
        tokens.add(token)
        message_ids.add(copy.message["Message-ID"])
        # The patch travels inside the encryption.
        [patch_part] = [p for p in inner.iter_attachments()]
        assert patch_part.get_filename() == "fix.patch"
        assert patch_part.get_content() in (PATCH, PATCH.decode())
        # Signed by the project key, and no other recipient's key opens it.
        signed = home.gpg.decrypt(armored(copy))
        assert signed.valid and signed.pubkey_fingerprint == world.settings.gnupg.key
        for other_email, other in world.homes().items():
            if other_email != email:
                assert not other.decrypt(armored(copy))[0]
        assert not world.mallory.decrypt(armored(copy))[0]
    assert len(tokens) == len(message_ids) == 4

    # The keyless member: nothing embargoed, only the content-free note; its copy is held.
    [note] = world.sink.to(KEYLESS)
    assert "waiting for your OpenPGP key" in str(note.message["Subject"])
    assert TEAM_TEXT.encode() not in note.raw and case_id.encode() not in note.raw
    assert notices(world, BOB) == []  # a team member without a key on record: held
    assert world.sink.to(OUTSIDER) == [] and world.sink.to(PUBLIC) == []
    assert notices(world, REPORTER) == []
    held = {r.to_addr: r.last_error for r in rows(world, announce.NOTICE) if r.status == "held"}
    assert held == {KEYLESS: member_mail.NO_KEY, BOB: announce.TEAM_NO_KEY}
    assert all(r.encrypted for r in rows(world, announce.NOTICE) if r.status == "sent")

    # cases show --json: each recipient with its delivery status.
    shown = world.cli("--json", "cases", "show", case_id)
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    ann = doc["announcement"]
    assert dt.datetime.fromisoformat(ann["until"]) == until.replace(microsecond=0)
    statuses = {r["email"]: r["status"] for r in ann["recipients"]}
    assert statuses == {**{m: "sent" for m in MEMBERS}, KEYLESS: "held", ALICE: "sent",
                        BOB: "held"}
    assert all(set(r) >= {"email", "status", "vendor_status", "statement"}
               for r in ann["recipients"])
    assert {r["email"]: r["role"] for r in ann["recipients"]}[ALICE] == "team"
    text = world.cli("cases", "show", case_id).stdout
    assert "embargo ends" in text and "sec@distro-d.example  member  held" in text


def test_the_keyless_member_gets_its_copy_once_a_key_is_pinned(world: World):
    case_id = world.confirmed_case()
    assert embargo(world, case_id, world.now() + dt.timedelta(days=2)).returncode == 0
    world.deliver()
    home, fpr = world.members[MEMBERS[0]]  # the keyless member gets (say) this key
    with db.transaction(world.factory) as session:
        member = member_states.find_member(session, "distributors", KEYLESS)
        member.fingerprint = fpr
        assert member_mail.release_held(session, world.now(), member) == 1
    world.deliver()
    [copy] = notices(world, KEYLESS)
    assert TEAM_TEXT in text_of(opened(copy, home))
    with world.factory() as session:
        rec = session.scalar(select(AnnouncementRecipient).where(
            AnnouncementRecipient.email == KEYLESS))
        assert announce.delivery_status(session, rec) == "sent"


def test_too_long_an_embargo_is_refused_naming_the_limit(world: World):
    case_id = world.confirmed_case()
    result = embargo(world, case_id, world.now() + dt.timedelta(days=15))
    assert result.returncode == 1
    assert "14 days" in result.stderr and "max_embargo_days" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    with world.factory() as session:
        assert session.get(Case, case_id).state == "confirmed"
        assert session.get(Announcement, case_id) is None
    assert rows(world, announce.NOTICE) == []


def test_longer_than_preferred_is_accepted_with_a_warning(world: World):
    case_id = world.confirmed_case()
    result = embargo(world, case_id, world.now() + dt.timedelta(days=10))
    assert result.returncode == 0, result.stderr
    [warning] = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert "7 days" in warning
    # The operator is reminded that the text will be public at disclosure.
    assert "public advisory" in result.stderr
    assert "preferred_embargo_days" in warning
    with world.factory() as session:
        case = session.get(Case, case_id)
        assert case.state == "embargoed"
        [event] = [e for e in case.events if e.action == "embargo"]
        assert "warning:" in event.detail and "7 days" in event.detail


def test_a_later_embargo_reschedules_and_tells_everyone_notified(world: World):
    case_id = world.confirmed_case()
    first = world.now() + dt.timedelta(days=2)
    assert embargo(world, case_id, first).returncode == 0
    world.deliver()
    first_tokens = {email: token_of(text_of(opened(notices(world, email)[0], home)))
                    for email, home in world.homes().items()}
    later = world.now() + dt.timedelta(days=4)
    result = world.cli("cases", "embargo", case_id, "--until", iso(later),
                       "--message", "The release moved by two days.")
    assert result.returncode == 0, result.stderr
    assert "embargoed -> embargoed" in result.stdout and "moved from" in result.stdout
    world.deliver()
    for email, home in world.homes().items():
        old, new = notices(world, email)  # one more copy each, again encrypted alone
        inner = opened(new, home)
        text = text_of(inner)
        assert "HAS MOVED" in text and "The release moved by two days." in text
        assert later.astimezone(dt.UTC).strftime("%A %-d %B %Y, %H:%M UTC") in text
        assert first.astimezone(dt.UTC).strftime("%A %-d %B %Y, %H:%M UTC") in text
        token = token_of(text)
        assert token == first_tokens[email]  # the same copy's token
        assert new.message["Message-ID"] == f"<{case_id}.{token}.r1.seclistd@example.org>"
        assert new.message["In-Reply-To"] == old.message["Message-ID"]
        for other_email, other in world.homes().items():
            if other_email != email:
                assert not other.decrypt(armored(new))[0]
    assert world.sink.to(OUTSIDER) == [] and notices(world, BOB) == []
    held = [r.to_addr for r in rows(world, announce.RESCHEDULED) if r.status == "held"]
    assert sorted(held) == sorted([KEYLESS, BOB])
    with world.factory() as session:
        ann = session.get(Announcement, case_id)
        assert ann.revision == 1 and ann.until == later.replace(microsecond=0)
        assert session.get(Case, case_id).embargo_until == later.replace(microsecond=0)


# --- the signed X-EMBARGO ------------------------------------------------------------------

def _command_with_patch(case_id: str, until: dt.datetime) -> bytes:
    boundary = f"mix-{uuid.uuid4().hex[:12]}"
    text = f"X-CASE: {case_id}\nX-EMBARGO: {iso(until)}\n\n{TEAM_TEXT}\n"
    return (f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n--{boundary}\r\n'
            "Content-Type: text/plain; charset=utf-8\r\n\r\n" + crlf(text)
            + f"\r\n--{boundary}\r\nContent-Type: text/x-diff; name=fix.patch\r\n"
            "Content-Disposition: attachment; filename=fix.patch\r\n\r\n"
            + crlf(PATCH.decode()) + f"\r\n--{boundary}--\r\n").encode()


def test_signed_x_embargo_with_an_attachment_does_what_the_cli_does(world: World):
    case_id = world.confirmed_case()
    until = world.now() + dt.timedelta(days=3)
    signed = _command_with_patch(case_id, until)
    raw = signed_mail(ALICE, "embargo", signed, world.alice.sign(signed, world.alice_fpr))
    outcome = accept(world.factory, world.settings, raw, source="ingest", now=world.now())
    assert outcome.route == "command"
    with world.factory() as session:
        case = session.get(Case, case_id)
        assert case.state == "embargoed" and case.embargo_until == until.replace(microsecond=0)
        assert [a.filename for a in session.get(Announcement, case_id).attachments] == [
            "fix.patch"]
    world.deliver()
    for email, home in world.homes().items():
        [copy] = notices(world, email)
        inner = opened(copy, home)
        assert TEAM_TEXT in text_of(inner) and "X-EMBARGO" not in text_of(inner)
        [part] = list(inner.iter_attachments())
        assert part.get_filename() == "fix.patch" and b"buf[64]" not in copy.raw
        assert "buf[64]" in str(part.get_content())
    assert [r.message["Subject"] for r in world.sink.to(KEYLESS)] == [
        "Example: mail is waiting for your OpenPGP key"]
    assert world.sink.to(OUTSIDER) == [] and notices(world, BOB) == []


def test_unsigned_x_embargo_sends_nothing(world: World):
    case_id = world.confirmed_case()
    until = world.now() + dt.timedelta(days=3)
    body = f"X-CASE: {case_id}\r\nX-EMBARGO: {iso(until)}\r\n\r\n{TEAM_TEXT}\r\n"
    raw = (f"From: {ALICE}\r\nTo: security@example.org\r\nSubject: embargo\r\n"
           f"Message-ID: <{uuid.uuid4().hex}@example.org>\r\n\r\n{body}").encode()
    accept(world.factory, world.settings, raw, source="ingest", now=world.now())
    with world.factory() as session:
        assert session.get(Case, case_id).state == "confirmed"
    assert rows(world, announce.NOTICE) == []


def test_a_missing_or_oversized_attachment_is_one_line(world: World, tmp_path: Path):
    case_id = world.confirmed_case()
    until = iso(world.now() + dt.timedelta(days=5))
    missing = world.cli("cases", "embargo", case_id, "--until", until, "--message", "x",
                        "--attach", str(tmp_path / "nope.patch"))
    assert missing.returncode == 1 and "no such file" in missing.stderr
    big = tmp_path / "big.patch"
    with big.open("wb") as out:  # sparse: its size is judged before it is read
        out.truncate(announce.MAX_ATTACHMENT_BYTES + 1)
    oversized = world.cli("cases", "embargo", case_id, "--until", until, "--message", "x",
                          "--attach", str(big))
    assert oversized.returncode == 1 and "more than" in oversized.stderr
    for result in (missing, oversized):
        assert len(result.stderr.strip().splitlines()) == 1
    with world.factory() as session:
        assert session.get(Case, case_id).state == "confirmed"
