"""OpenPGP with real gpg homes: encrypted reports and encrypted answers, keys the reporter
sends, the decompression bomb, and signed team commands, including every forgery the issue
names; each forgery must leave the case untouched."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from sqlalchemy import func, select

from seclistd import config, daemon, db
from seclistd.crypto import CryptoError, keyring_for
from seclistd.intake.store import accept
from seclistd.models import Case, Event, HonouredSignature, Message, Outbox
from tests.components import MACHINE_CLOCK, Sink, case_id, cli, faketime_env, report, write_config
from tests.pgp import (
    Home,
    crlf,
    encrypted_mail,
    entity,
    new_home,
    signed_mail,
    with_key_attached,
)

ALICE = "alice@example.org"
REPORTER = "rita@example.net"
REPORT_TEXT = ("The parser in version 1.4.2 overflows a heap buffer; a remote attacker can "
               "execute code.\nSteps: send poc.cfg.\nCredit: Rita Reporter")


@dataclasses.dataclass
class World:
    """Real gpg homes for the project, a team member, the reporter and an attacker.

    gpg stamps keys and signatures with the machine's clock, and the signature rules compare
    them with seclistd's ``now``: so this world's clock is the machine's, read once when the
    world is made (``start``) and run on from there by the monotonic clock, and every
    expected case ID is derived from it (``case_id``)."""

    tmp: Path
    path: Path
    settings: config.Settings
    factory: object
    sink: Sink
    project: Home
    project_fpr: str
    alice: Home
    alice_fpr: str
    reporter: Home
    reporter_fpr: str
    mallory: Home
    mallory_fpr: str
    start: dt.datetime = dataclasses.field(default_factory=lambda: dt.datetime.now(dt.UTC))
    ticks: float = dataclasses.field(default_factory=time.monotonic)

    def now(self) -> dt.datetime:
        return self.start + dt.timedelta(seconds=time.monotonic() - self.ticks)

    def case_id(self, n: int = 1) -> str:
        return case_id(n, self.start)

    def ingest(self, raw: bytes, at: dt.datetime | None = None):
        return accept(self.factory, self.settings, raw, source="ingest", now=at or self.now())

    def deliver(self) -> None:
        daemon.drain_relay(self.settings, self.factory, self.now)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The CLI on this world's clock (the machine's: see the class)."""
        return cli(self.path, *args, at=MACHINE_CLOCK)

    def case(self, case_id: str | None = None) -> Case:
        with self.factory() as session:
            return session.get(Case, case_id or self.case_id(1))

    def events(self, case_id: str | None = None) -> list[Event]:
        with self.factory() as session:
            return list(session.get(Case, case_id or self.case_id(1)).events)

    def open_case(self) -> str:
        outcome = self.ingest(report(1, sender=REPORTER, body=REPORT_TEXT))
        return outcome.case_id


@contextlib.contextmanager
def make_world(tmp_path: Path, sink: Sink, db_url: str | None = None,
               team: tuple[str, ...] = (ALICE,)) -> Iterator[World]:
    project, alice, reporter, mallory = (new_home() for _ in range(4))
    try:
        project_fpr = project.generate("Example security team", "security@example.org")
        alice_fpr = alice.generate("Alice", ALICE)
        reporter_fpr = reporter.generate("Rita Reporter", REPORTER)
        mallory_fpr = mallory.generate("Mallory", "mallory@example.net")
        # The operator imports the team's keys; the team knows the project key.
        project.gpg.import_keys(alice.export(alice_fpr))
        for home in (alice, reporter, mallory):
            home.gpg.import_keys(project.export(project_fpr))
        path = write_config(tmp_path, db_url=db_url, relay_port=sink.port, team=list(team),
                            gnupg_home=project.path, gnupg_key=project_fpr,
                            fingerprints={ALICE: alice_fpr})
        settings = config.load(str(path))
        db.migrate(settings.database.url)
        engine = db.make_engine(settings.database.url)
        factory = db.session_factory(engine)
        yield World(tmp_path, path, settings, factory, sink, project, project_fpr, alice,
                    alice_fpr, reporter, reporter_fpr, mallory, mallory_fpr)
        engine.dispose()
    finally:
        for home in (project, alice, reporter, mallory):
            home.close()


@pytest.fixture
def world(tmp_path: Path, sink: Sink) -> Iterator[World]:
    with make_world(tmp_path, sink) as w:
        yield w


# -- encrypted reports ---------------------------------------------------------------------

def test_encrypted_report_with_attached_key_gets_an_answer_only_the_reporter_can_read(
        world: World):
    inner = with_key_attached(REPORT_TEXT, world.reporter.export(world.reporter_fpr))
    armored = world.reporter.encrypt(inner, world.project_fpr)
    outcome = world.ingest(encrypted_mail(REPORTER, "Vulnerability report", armored))
    case = world.case(outcome.case_id)
    assert case.encrypted and case.reporter_key == world.reporter_fpr
    with world.factory() as session:
        stored = session.scalar(select(Message))
        assert stored.encrypted and "overflows a heap buffer" in stored.text
        assert b"overflows" not in stored.raw  # kept as received: ciphertext

    world.deliver()
    [receipt] = world.sink.to(REPORTER)
    msg = receipt.message
    assert msg.get_content_type() == "multipart/encrypted"
    assert msg["Subject"] == f"[{case.id}] ..."  # the real subject travels inside
    assert b"overflow" not in receipt.raw and b"automatic confirmation" not in receipt.raw
    armored_reply = msg.get_payload()[1].get_payload(decode=True)
    ok, plain = world.reporter.decrypt(armored_reply)
    assert ok and b"automatic confirmation" in plain
    assert f"Subject: [{world.case_id(1)}] Vulnerability report".encode() in plain
    assert not world.mallory.decrypt(armored_reply)[0]
    signed = world.reporter.gpg.decrypt(armored_reply)  # signed by the project key
    assert signed.valid and signed.pubkey_fingerprint == world.project_fpr
    recipients = world.mallory.gpg.get_recipients(armored_reply)
    reporter_subkeys = [k for k in world.reporter.gpg.list_keys()[0]["subkeys"]]
    assert recipients == [reporter_subkeys[0][0]]
    with world.factory() as session:
        row = session.scalar(select(Outbox).where(Outbox.kind == "receipt"))
        assert row.encrypted and row.status == "sent"
    # The team notice goes to Alice encrypted to her key on record.
    [notice] = world.sink.to(ALICE)
    assert world.alice.decrypt(notice.message.get_payload()[1].get_payload(decode=True))[0]


def test_autocrypt_key_is_pinned_and_used(world: World):
    import base64

    keydata = base64.b64encode(world.reporter.run("--export", world.reporter_fpr)).decode()
    folded = "\r\n ".join(keydata[i:i + 72] for i in range(0, len(keydata), 72))
    raw = report(1, sender=REPORTER, body=REPORT_TEXT,
                 headers=f"Autocrypt: addr={REPORTER}; keydata=\r\n {folded}\r\n")
    outcome = world.ingest(raw)
    assert world.case(outcome.case_id).reporter_key == world.reporter_fpr
    world.deliver()
    [receipt] = world.sink.to(REPORTER)
    assert receipt.message.get_content_type() == "multipart/encrypted"


def test_inline_encrypted_report(world: World):
    armored = world.reporter.encrypt(REPORT_TEXT.encode(), world.project_fpr)
    raw = (f"From: {REPORTER}\r\nTo: security@example.org\r\nSubject: report\r\n"
           "Message-ID: <inline@example.net>\r\n\r\n").encode() + armored
    outcome = world.ingest(raw)
    with world.factory() as session:
        assert "overflows a heap buffer" in session.scalar(select(Message.text))
    assert world.case(outcome.case_id).encrypted


def test_undecryptable_report_is_kept_and_its_answer_held_until_a_key_is_known(world: World):
    world.reporter.gpg.import_keys(world.mallory.export(world.mallory_fpr))
    armored = world.reporter.encrypt(REPORT_TEXT.encode(), world.mallory_fpr)  # wrong key
    outcome = world.ingest(encrypted_mail(REPORTER, "report", armored))
    assert outcome.route == "new_report"
    with world.factory() as session:
        text = session.scalar(select(Message.text))
    assert "could not" in text or "cannot decrypt" in text
    world.deliver()
    assert world.sink.to(REPORTER) == []  # never in plaintext to someone who wrote encrypted
    listing = json.loads(world.cli("--json", "outbox", "list", "--status", "held").stdout)
    [held] = listing
    assert "keys import" in held["last_error"]
    # The operator imports the reporter's key and retries: it is pinned and goes out sealed.
    key_file = world.tmp / "rita.asc"
    key_file.write_bytes(world.reporter.export(world.reporter_fpr))
    assert world.cli("keys", "import", str(key_file)).returncode == 0
    assert world.cli("outbox", "retry", str(held["id"])).returncode == 0
    world.deliver()
    [receipt] = world.sink.to(REPORTER)
    assert receipt.message.get_content_type() == "multipart/encrypted"
    assert world.case(outcome.case_id).reporter_key == world.reporter_fpr


def test_decompression_bomb_is_quarantined_within_bounded_memory(world: World):
    bomb = subprocess.run(
        f"head -c 300000000 /dev/zero | gpg --homedir {world.reporter.path} --batch "
        f"--trust-model always --compress-algo zlib -z 9 --armor --encrypt "
        f"-r {world.project_fpr}", shell=True, capture_output=True, check=True).stdout
    assert len(bomb) < 1_000_000
    (world.tmp / "bomb.eml").write_bytes(encrypted_mail(REPORTER, "zip", bomb))
    wrapper = ("import resource, subprocess, sys\n"
               "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)\n"
               "print(done.stdout)\n")
    out = subprocess.run([sys.executable, "-c", wrapper, sys.executable, "-m", "seclistd",
                          "--config", str(world.path), "--json", "ingest",
                          str(world.tmp / "bomb.eml")], capture_output=True, text=True,
                         check=True, env={**os.environ, **faketime_env(MACHINE_CLOCK)},
                         ).stdout.split("\n", 1)
    peak_mb, result = int(out[0]), json.loads(out[1])
    assert result[0]["status"] == "quarantined"
    assert "limits.max_decrypted_bytes" in result[0]["reason"]
    assert peak_mb < 250, f"peak RSS {peak_mb} MB"
    with world.factory() as session:
        kept = session.scalar(select(Message.raw))
    assert bomb in kept  # the message is kept as received


def test_encrypt_refuses_unknown_keys_and_addresses_never_pick_lookalikes(world: World):
    ring = keyring_for(world.settings.gnupg)
    with pytest.raises(CryptoError, match="no key"):
        ring.encrypt(b"x", world.mallory_fpr)
    lookalike = new_home()
    try:
        fpr = lookalike.generate("Evil", "alice@example.org.evil.test")
        ring.import_keys(lookalike.export(fpr))
        assert ring.key_for_address(ALICE) == world.alice_fpr
    finally:
        lookalike.close()


# -- signed commands -----------------------------------------------------------------------

def command(case_id: str, *lines: str, text: str = "Thanks for the report, we are on it.") -> str:
    return "\n".join([f"X-CASE: {case_id}", *lines, "", text])


def signed_by(world: World, home: Home, fpr: str, body: str, subject: str = "cmd",
              **kw: object) -> bytes:
    signed = entity(body)
    return signed_mail(ALICE, subject, signed, home.sign(signed, fpr), **kw)  # type: ignore[arg-type]


def test_a_valid_signed_command_acts_and_is_honoured_once(world: World):
    case_id = world.open_case()
    raw = signed_by(world, world.alice, world.alice_fpr,
                    command(case_id, "X-ACK", "X-ASSIGN: alice@example.org"))
    outcome = world.ingest(raw)
    assert outcome.route == "command" and outcome.case_id == case_id
    case = world.case(case_id)
    assert case.state == "acknowledged" and case.handler == ALICE
    assert [e.action for e in world.events()][-3:] == ["ack", "assign", "command"]
    assert world.events()[-1].actor == ALICE
    world.deliver()
    ack = [r for r in world.sink.to(REPORTER) if "on it" in r.message.get_body().get_content()]
    assert len(ack) == 1
    with world.factory() as session:
        assert session.scalar(select(func.count()).select_from(HonouredSignature)) == 1


def test_signed_then_encrypted_command(world: World):
    case_id = world.open_case()
    signed = entity(command(case_id, "X-ACK"))
    inner = signed_mail(ALICE, "x", signed, world.alice.sign(signed, world.alice_fpr))
    inner = inner[inner.index(b"Content-Type: multipart/signed"):]  # the entity, no headers
    armored = world.alice.encrypt(inner, world.project_fpr)
    world.ingest(encrypted_mail(ALICE, "cmd", armored))
    assert world.case(case_id).state == "acknowledged"


def test_all_keywords_or_none(world: World):
    case_id = world.open_case()
    raw = signed_by(world, world.alice, world.alice_fpr,
                    command(case_id, "X-ACK", f"X-DUPLICATE: {world.case_id(999)}"))
    world.ingest(raw)
    case = world.case(case_id)
    assert case.state == "new" and case.acknowledged_at is None
    refusal = world.events()[-1]
    assert refusal.action == "command_refused" and "nothing was done" in refusal.detail
    with world.factory() as session:
        [explained] = session.scalars(select(Outbox).where(Outbox.kind == "command_refused"))
        assert explained.to_addr == ALICE and explained.encrypt_to == world.alice_fpr
        body = message_from_bytes(explained.raw, policy=policy.default).get_body().get_content()
        assert "on it" not in body  # never an echo of the content


def _forgeries(world: World, case_id: str) -> dict[str, tuple[bytes, str]]:
    """name -> (raw mail, the rule its refusal must name)."""
    good_cmd = command(case_id, "X-ACK")
    harmless = entity("Just saying hello, nothing to do here.")
    forged = {}
    # 1. Not signed at all.
    forged["unsigned"] = ((f"From: {ALICE}\r\nTo: security@example.org\r\nSubject: x\r\n"
                           f"Message-ID: <u1@example.org>\r\n\r\n{good_cmd}\r\n").encode(),
                          "not signed")
    # 2. From Alice, signed by Mallory's own key (which the keyring knows from some report).
    world.project.gpg.import_keys(world.mallory.export(world.mallory_fpr))
    forged["other key"] = (signed_by(world, world.mallory, world.mallory_fpr, good_cmd),
                           "not by the key on record")
    # 3. A key whose user ID copies Alice's address.
    fake_fpr = world.mallory.generate("Alice", ALICE)
    world.project.gpg.import_keys(world.mallory.export(fake_fpr))
    forged["lookalike uid"] = (signed_by(world, world.mallory, fake_fpr, good_cmd),
                               "not by the key on record")
    # 4. A signed harmless part beside an unsigned command part.
    signed_part = signed_mail(ALICE, "x", harmless, world.alice.sign(harmless, world.alice_fpr))
    signed_part = signed_part[signed_part.index(b"Content-Type: multipart/signed"):]
    forged["signed part beside"] = (
        (f"From: {ALICE}\r\nTo: security@example.org\r\nSubject: x\r\n"
         "Message-ID: <m1@example.org>\r\nMIME-Version: 1.0\r\n"
         'Content-Type: multipart/mixed; boundary="OUT"\r\n\r\n--OUT\r\n').encode()
        + signed_part + (f"\r\n--OUT\r\nContent-Type: text/plain\r\n\r\n{good_cmd}\r\n"
                         "--OUT--\r\n").encode(), "not signed")
    # 5. Commands prepended and appended outside the signed entity.
    forged["outside the signature"] = (
        signed_mail(ALICE, "x", harmless, world.alice.sign(harmless, world.alice_fpr),
                    preamble=good_cmd + "\n", epilogue="\n" + good_cmd),
        "must name its case")
    # 6. Two signatures over the command.
    signed = entity(good_cmd)
    second = new_home()
    try:
        second_fpr = second.generate("Alice", ALICE)
        two = world.alice.sign(signed, world.alice_fpr) + b"\r\n" + second.sign(signed,
                                                                                 second_fpr)
    finally:
        second.close()
    forged["two signatures"] = (signed_mail(ALICE, "x", signed, two), "2 signatures")
    # 7. A bad signature: the text changed after signing.
    signature = world.alice.sign(signed, world.alice_fpr)
    forged["bad signature"] = (signed_mail(ALICE, "x", signed.replace(b"X-ACK", b"X-REJECT"),
                                           signature), "does not match")
    return forged


@pytest.mark.parametrize("name", ["unsigned", "other key", "lookalike uid", "signed part beside",
                                  "outside the signature", "two signatures", "bad signature"])
def test_forgeries_leave_the_case_untouched(world: World, name: str):
    case_id = world.open_case()
    raw, rule = _forgeries(world, case_id)[name]
    before = world.case(case_id)
    world.ingest(raw)
    after = world.case(case_id)
    assert (after.state, after.handler, after.acknowledged_at, after.resolution) == (
        before.state, before.handler, before.acknowledged_at, before.resolution)
    refusals = [e for e in world.events() if e.action == "command_refused"]
    assert len(refusals) == 1 and rule in refusals[0].detail, [e.detail for e in refusals]
    # Only Alice's own good signature (over harmless text) is spent by its refusal.
    with world.factory() as session:
        assert session.scalar(select(func.count()).select_from(HonouredSignature)) == (
            1 if name == "outside the signature" else 0)


def _team_key_world(world: World, fpr: str) -> World:
    path = write_config(world.tmp, relay_port=world.sink.port, team=[ALICE],
                        gnupg_home=world.project.path, gnupg_key=world.project_fpr,
                        fingerprints={ALICE: fpr})
    return dataclasses.replace(world, settings=config.load(str(path)))


def test_expired_key_is_refused(world: World):
    home = new_home()
    try:
        # Valid from 10 days ago for one day; the command is signed 9.5 days ago.
        home.run("--quick-gen-key", "Alice <alice@example.org>", "ed25519", "sign", "1d",
                 faketime="-240h")
        fpr = home.gpg.list_keys()[0]["fingerprint"]
        world.project.gpg.import_keys(home.export(fpr))
        w = _team_key_world(world, fpr)
        case_id = w.open_case()
        signed = entity(command(case_id, "X-ACK"))
        w.ingest(signed_mail(ALICE, "x", signed, home.sign(signed, fpr, faketime="-228h")))
    finally:
        home.close()
    assert w.case(case_id).state == "new"
    assert "expired" in [e for e in w.events() if e.action == "command_refused"][0].detail


def test_revoked_key_is_refused(world: World):
    case_id = world.open_case()
    signed = entity(command(case_id, "X-ACK"))
    raw = signed_mail(ALICE, "x", signed, world.alice.sign(signed, world.alice_fpr))
    world.project.gpg.import_keys(world.alice.revocation(world.alice_fpr))
    world.ingest(raw)
    assert world.case(case_id).state == "new"
    assert "revoked" in [e for e in world.events() if e.action == "command_refused"][0].detail


def test_replays_are_refused(world: World):
    first = world.open_case()
    second = world.ingest(report(2, sender="other@example.net")).case_id
    signed = entity(command(first, "X-ASSIGN: alice@example.org"))
    signature = world.alice.sign(signed, world.alice_fpr)
    original = signed_mail(ALICE, f"[{first}] assign", signed, signature,
                           message_id="<cmd-1@example.org>")
    assert world.ingest(original).route == "command"
    assert world.case(first).handler == ALICE
    # The identical mail again: stored once, not processed again.
    assert world.ingest(original).duplicate
    # The same signed text under another case's subject, as a new mail.
    replay = signed_mail(ALICE, f"[{second}] assign", signed, signature,
                         message_id="<cmd-2@example.org>")
    world.ingest(replay)
    assert world.case(second).handler is None
    refusals = [e for e in world.events(first) if e.action == "command_refused"]
    assert len(refusals) == 1 and "already used once" in refusals[0].detail
    with world.factory() as session:
        assert session.scalar(select(func.count()).select_from(HonouredSignature)) == 1


# -- the keyring from the command line ----------------------------------------------------

def test_keys_commands(tmp_path: Path):
    home = new_home()
    path = write_config(tmp_path, gnupg_home=home.path)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        # The machine's clock, as gpg's: Bob's key below is made now, and a keyring on a
        # clock days behind would find it made in the future.
        return cli(path, *args, at=MACHINE_CLOCK)

    try:
        generated = run("--json", "keys", "generate")
        assert generated.returncode == 0, generated.stderr
        fpr = json.loads(generated.stdout)["fingerprint"]
        again = run("keys", "generate")
        assert again.returncode == 1 and "exists already" in again.stderr
        listed = json.loads(run("--json", "keys", "list").stdout)
        assert [(k["fingerprint"], k["secret"]) for k in listed] == [(fpr, True)]
        exported = run("keys", "export", fpr)
        assert exported.stdout.startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
        project = run("keys", "export")  # the generated key, with no config edit
        assert project.returncode == 0 and project.stdout == exported.stdout
        other = new_home()
        try:
            other_fpr = other.generate("Bob", "bob@example.org")
            (tmp_path / "bob.asc").write_bytes(other.export(other_fpr))
        finally:
            other.close()
        imported = json.loads(run("--json", "keys", "import", str(tmp_path / "bob.asc")).stdout)
        assert imported == {"imported": [other_fpr]}
        junk = tmp_path / "junk.asc"
        junk.write_text("not a key")
        assert run("keys", "import", str(junk)).returncode == 1
    finally:
        home.close()


# -- every rule of a signed command, each on its own ---------------------------------------

BOB = "bob@example.org"


def _refusals(world: World, case_id: str) -> list[str]:
    return [e.detail for e in world.events(case_id) if e.action == "command_refused"]


def _untouched(world: World, case_id: str) -> None:
    case = world.case(case_id)
    assert (case.state, case.handler, case.acknowledged_at) == ("new", None, None)
    assert "command" not in [e.action for e in world.events(case_id)]


@pytest.mark.parametrize(("age", "rule"), [
    (dt.timedelta(days=31), "older than 30 days"),
    (-dt.timedelta(hours=2), "in the future"),
])
def test_signature_too_old_or_from_the_future(world: World, age: dt.timedelta, rule: str):
    case_id = world.open_case()
    raw = signed_by(world, world.alice, world.alice_fpr, command(case_id, "X-ACK"))
    # The signature is made now; seclistd reads the mail 31 days later, or 2 hours earlier.
    world.ingest(raw, at=world.now() + age)
    _untouched(world, case_id)
    [refusal] = _refusals(world, case_id)
    assert rule in refusal


def test_signature_at_the_edges_of_its_window_counts(world: World):
    case_id = world.open_case()
    raw = signed_by(world, world.alice, world.alice_fpr, command(case_id, "X-ACK"))
    world.ingest(raw, at=world.now() + dt.timedelta(days=29))
    assert world.case(case_id).state == "acknowledged"


def test_x_case_naming_no_case(world: World):
    case_id = world.open_case()
    ghost = world.case_id(999)
    world.ingest(signed_by(world, world.alice, world.alice_fpr, command(ghost, "X-ACK"),
                           subject=f"[{case_id}] ack"))
    _untouched(world, case_id)
    [refusal] = _refusals(world, case_id)  # recorded on the case the subject names
    assert f"X-CASE names {ghost}, which is not a case" in refusal


def test_team_member_without_a_fingerprint(world: World):
    path = write_config(world.tmp, relay_port=world.sink.port, team=[ALICE],
                        gnupg_home=world.project.path, gnupg_key=world.project_fpr)
    w = dataclasses.replace(world, settings=config.load(str(path)))
    case_id = w.open_case()
    w.ingest(signed_by(w, w.alice, w.alice_fpr, command(case_id, "X-ACK")))
    _untouched(w, case_id)
    [refusal] = _refusals(w, case_id)
    assert "no key on record" in refusal


@pytest.mark.parametrize(("lines", "rule"), [
    (("X-FROBNICATE",), "unknown keyword X-FROBNICATE"),
    ((), "X-CASE but no action keyword"),
])
def test_unknown_keyword_or_no_action(world: World, lines: tuple[str, ...], rule: str):
    case_id = world.open_case()
    world.ingest(signed_by(world, world.alice, world.alice_fpr, command(case_id, *lines)))
    _untouched(world, case_id)
    [refusal] = _refusals(world, case_id)
    assert rule in refusal


def test_refusal_mails_are_capped_per_sender(world: World):
    case_id = world.open_case()
    limit = world.settings.autoreply.max_per_sender_per_day
    for i in range(limit + 3):
        world.ingest((f"From: {ALICE}\r\nTo: security@example.org\r\nSubject: [{case_id}] x\r\n"
                      f"Message-ID: <forged-{i}@example.org>\r\n\r\n"
                      f"X-CASE: {case_id}\nX-ACK\n").encode())
    _untouched(world, case_id)
    assert len(_refusals(world, case_id)) == limit + 3  # every attempt is on the record
    with world.factory() as session:
        mails = session.scalar(select(func.count()).select_from(Outbox).where(
            Outbox.kind == "command_refused"))
    assert mails == limit  # but the sender hears of the first ones only


def test_signed_and_encrypted_in_one_openpgp_message(world: World):
    case_id = world.open_case()
    armored = world.alice.encrypt(entity(command(case_id, "X-ACK")), world.project_fpr,
                                  sign_fpr=world.alice_fpr)
    outcome = world.ingest(encrypted_mail(ALICE, "cmd", armored))
    assert outcome.route == "command"
    assert world.case(case_id).state == "acknowledged"
    # The same, signed by an attacker's key: refused, whatever From says.
    second = world.ingest(report(2, sender="other@example.net")).case_id
    world.mallory.gpg.import_keys(world.project.export(world.project_fpr))
    forged = world.mallory.encrypt(entity(command(second, "X-ACK")), world.project_fpr,
                                   sign_fpr=world.mallory_fpr)
    world.ingest(encrypted_mail(ALICE, "cmd", forged))
    assert world.case(second).state == "new"
    assert _refusals(world, second)


def test_stray_keyword_outside_the_signed_part_is_ignored(world: World):
    case_id = world.open_case()
    signed = entity(command(case_id, "X-ASSIGN: alice@example.org"))
    raw = signed_mail(ALICE, "x", signed, world.alice.sign(signed, world.alice_fpr),
                      preamble="X-REJECT\n", epilogue="\nX-DUPLICATE: " + world.case_id(2))
    world.ingest(raw)
    case = world.case(case_id)
    assert case.handler == ALICE  # the signed command was carried out
    assert case.state == "new" and case.resolution is None  # the stray ones were not


def test_command_signed_by_another_team_members_key(world: World):
    bob = new_home()
    try:
        bob_fpr = bob.generate("Bob", BOB)
        world.project.gpg.import_keys(bob.export(bob_fpr))
        path = write_config(world.tmp, relay_port=world.sink.port, team=[ALICE, BOB],
                            gnupg_home=world.project.path, gnupg_key=world.project_fpr,
                            fingerprints={ALICE: world.alice_fpr, BOB: bob_fpr})
        w = dataclasses.replace(world, settings=config.load(str(path)))
        case_id = w.open_case()
        signed = entity(command(case_id, "X-ACK"))
        # From names Alice; the signature is Bob's, a good one by a key on record, not hers.
        w.ingest(signed_mail(ALICE, "x", signed, bob.sign(signed, bob_fpr)))
    finally:
        bob.close()
    _untouched(w, case_id)
    [refusal] = _refusals(w, case_id)
    assert "not by the key on record for the sender" in refusal



# -- keywords come from the signed text itself (issue 8 item 6) ----------------------------

def _mixed(*parts: bytes, subtype: str = "mixed") -> bytes:
    boundary = f"b-{uuid.uuid4().hex[:12]}"
    out = f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\n'.encode()
    for part in parts:
        out += f"--{boundary}\r\n".encode() + part + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def _forwarded(text: str) -> bytes:
    return ("Content-Type: message/rfc822\r\nContent-Disposition: attachment\r\n\r\n"
            f"From: {REPORTER}\r\nTo: security@example.org\r\nSubject: fwd\r\n"
            "Content-Type: text/plain\r\n\r\n" + crlf(text)).encode()


def _text_file(text: str) -> bytes:
    return ('Content-Type: text/plain; name="cmd.txt"\r\n'
            'Content-Disposition: attachment; filename="cmd.txt"\r\n\r\n' + crlf(text)).encode()


def _signed_command_mail(world: World, signed: bytes, **kw: object) -> bytes:
    return signed_mail(ALICE, "cmd", signed, world.alice.sign(signed, world.alice_fpr),
                       **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("where", ["forwarded message", "attached text file",
                                   "nested multipart"])
def test_keywords_outside_the_first_direct_text_part_are_not_commands(world: World,
                                                                       where: str):
    case_id = world.open_case()
    hostile = command(case_id, "X-REJECT", text="Not a vulnerability.")
    part = {"forwarded message": _forwarded(hostile), "attached text file": _text_file(hostile),
            "nested multipart": _mixed(entity(hostile))}[where]
    world.ingest(_signed_command_mail(world, _mixed(part)))
    case = world.case(case_id)
    assert (case.state, case.resolution) == ("new", None)
    [refusal] = [e for e in world.events(case_id) if e.action == "command_refused"]
    assert "must name its case" in refusal.detail


def test_the_signers_own_text_acts_and_a_forwarded_command_inside_does_not(world: World):
    case_id = world.open_case()
    own = entity(command(case_id, "X-ACK", text="Thanks, we are on it."))
    signed = _mixed(_forwarded(command(case_id, "X-REJECT", text="Not a bug.")), own)
    outcome = world.ingest(_signed_command_mail(world, signed))
    assert outcome.route == "command"
    case = world.case(case_id)
    assert (case.state, case.resolution) == ("acknowledged", None)


def test_a_signed_multipart_alternative_reads_its_plain_text(world: World):
    case_id = world.open_case()
    html = b"Content-Type: text/html\r\n\r\n<p>X-REJECT</p>"
    signed = _mixed(entity(command(case_id, "X-ACK")), html, subtype="alternative")
    world.ingest(_signed_command_mail(world, signed))
    assert world.case(case_id).state == "acknowledged"


def test_a_refused_signature_cannot_be_replayed_once_the_case_allows_it(world: World):
    from seclistd.workflows import lifecycle

    case_id = world.open_case()
    signed = entity(command(case_id, "X-DISCLOSE", text="Fixed in 1.4.3."))
    signature = world.alice.sign(signed, world.alice_fpr)
    world.ingest(signed_mail(ALICE, f"[{case_id}] disclose", signed, signature,
                             message_id="<disclose-1@example.org>"))
    assert world.case(case_id).state == "new"
    # The team moves the case on: disclosure would now be allowed.
    with db.transaction(world.factory) as session:
        for request in (lifecycle.Request(action="ack", text="Got it."),
                        lifecycle.Request(action="confirm")):
            lifecycle.act(session, world.now(), world.settings, case_id, request, ALICE)
    # The refused mail again, as a new message: its signature was spent by the refusal.
    world.ingest(signed_mail(ALICE, f"[{case_id}] disclose", signed, signature,
                             message_id="<disclose-2@example.org>"))
    assert world.case(case_id).state == "confirmed"
    details = [e.detail for e in world.events(case_id) if e.action == "command_refused"]
    assert len(details) == 2
    assert "cannot disclose" in details[0] and "already used once" in details[1]
    with world.factory() as session:
        [spent] = session.scalars(select(HonouredSignature))
        assert spent.fingerprint == world.alice_fpr and spent.case_id == case_id


# -- who gets what (issue 8 item 7) --------------------------------------------------------

def test_a_member_without_a_key_never_gets_an_encrypted_cases_words(tmp_path: Path,
                                                                    sink: Sink):
    bob = "bob@example.org"
    with make_world(tmp_path, sink, team=(ALICE, bob)) as world:
        armored = world.reporter.encrypt(REPORT_TEXT.encode(), world.project_fpr)
        case_id = world.ingest(encrypted_mail(REPORTER, "Heap overflow in the parser",
                                              armored)).case_id
        more = world.reporter.encrypt(entity("More: the overflow is in cfg_read()."),
                                      world.project_fpr)
        world.ingest(encrypted_mail(REPORTER, f"Re: [{case_id}] more", more))
        world.deliver()

        to_bob = world.sink.to(bob)
        assert len(to_bob) == 2  # the new case, and the reporter's second message
        for mail in to_bob:
            assert mail.message.get_content_type() == "text/plain"
            for secret in (b"overflow", b"Heap", b"cfg_read", b"1.4.2"):
                assert secret not in mail.raw
            assert f"seclistd cases show {case_id}" in mail.message.get_body().get_content()
        plains = [world.alice.decrypt(m.message.get_payload()[1].get_payload(decode=True))
                  for m in world.sink.to(ALICE)]
        assert len(plains) == 2 and all(ok for ok, _ in plains)
        assert any(b"overflows a heap buffer" in p for _, p in plains)
        assert any(b"cfg_read" in p for _, p in plains)
