"""OpenPGP with real gpg homes: encrypted reports and encrypted answers, keys the reporter
sends, the decompression bomb, and signed team commands, including every forgery the issue
names; each forgery must leave the case untouched."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import subprocess
import sys
from collections.abc import Iterator
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from sqlalchemy import func, select

from seclistd import config, daemon, db
from seclistd.crypto import CryptoError, keyring_for
from seclistd.intake.store import accept
from seclistd.models import Case, Event, HonouredSignature, Message, Outbox
from tests.components import Sink, cli, report, write_config
from tests.pgp import Home, encrypted_mail, entity, new_home, signed_mail, with_key_attached

ALICE = "alice@example.org"
REPORTER = "rita@example.net"
REPORT_TEXT = ("The parser in version 1.4.2 overflows a heap buffer; a remote attacker can "
               "execute code.\nSteps: send poc.cfg.\nCredit: Rita Reporter")


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclasses.dataclass
class World:
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

    def ingest(self, raw: bytes):
        return accept(self.factory, self.settings, raw, source="ingest", now=now())

    def deliver(self) -> None:
        daemon.drain_relay(self.settings, self.factory, now)

    def case(self, case_id: str = "SEC-2026-0001") -> Case:
        with self.factory() as session:
            return session.get(Case, case_id)

    def events(self, case_id: str = "SEC-2026-0001") -> list[Event]:
        with self.factory() as session:
            return list(session.get(Case, case_id).events)

    def open_case(self) -> str:
        outcome = self.ingest(report(1, sender=REPORTER, body=REPORT_TEXT))
        return outcome.case_id


@pytest.fixture
def world(tmp_path: Path, sink: Sink) -> Iterator[World]:
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
        path = write_config(tmp_path, relay_port=sink.port, team=[ALICE],
                            gnupg_home=project.path, gnupg_key=project_fpr,
                            fingerprints={ALICE: alice_fpr})
        settings = config.load(str(path))
        db.migrate(settings.database.url)
        factory = db.session_factory(db.make_engine(settings.database.url))
        yield World(tmp_path, path, settings, factory, sink, project, project_fpr, alice,
                    alice_fpr, reporter, reporter_fpr, mallory, mallory_fpr)
    finally:
        for home in (project, alice, reporter, mallory):
            home.close()


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
    assert b"Subject: [SEC-2026-0001] Vulnerability report" in plain
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
    listing = json.loads(cli(world.path, "--json", "outbox", "list", "--status", "held").stdout)
    [held] = listing
    assert "keys import" in held["last_error"]
    # The operator imports the reporter's key and retries: it is pinned and goes out sealed.
    key_file = world.tmp / "rita.asc"
    key_file.write_bytes(world.reporter.export(world.reporter_fpr))
    assert cli(world.path, "keys", "import", str(key_file)).returncode == 0
    assert cli(world.path, "outbox", "retry", str(held["id"])).returncode == 0
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
                         check=True).stdout.split("\n", 1)
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
                    command(case_id, "X-ACK", "X-DUPLICATE: SEC-2026-0999"))
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
    with world.factory() as session:
        assert session.scalar(select(func.count()).select_from(HonouredSignature)) == 0


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
    assert len(refusals) == 1 and "already honoured" in refusals[0].detail
    with world.factory() as session:
        assert session.scalar(select(func.count()).select_from(HonouredSignature)) == 1


# -- the keyring from the command line ----------------------------------------------------

def test_keys_commands(tmp_path: Path):
    home = new_home()
    try:
        path = write_config(tmp_path, gnupg_home=home.path)
        generated = cli(path, "--json", "keys", "generate")
        assert generated.returncode == 0, generated.stderr
        fpr = json.loads(generated.stdout)["fingerprint"]
        again = cli(path, "keys", "generate")
        assert again.returncode == 1 and "exists already" in again.stderr
        listed = json.loads(cli(path, "--json", "keys", "list").stdout)
        assert [(k["fingerprint"], k["secret"]) for k in listed] == [(fpr, True)]
        exported = cli(path, "keys", "export", fpr)
        assert exported.stdout.startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
        missing = cli(path, "keys", "export")
        assert missing.returncode == 2 and "set gnupg.key" in missing.stderr
        other = new_home()
        try:
            other_fpr = other.generate("Bob", "bob@example.org")
            (tmp_path / "bob.asc").write_bytes(other.export(other_fpr))
        finally:
            other.close()
        imported = json.loads(cli(path, "--json", "keys", "import",
                                  str(tmp_path / "bob.asc")).stdout)
        assert imported == {"imported": [other_fpr]}
        junk = tmp_path / "junk.asc"
        junk.write_text("not a key")
        assert cli(path, "keys", "import", str(junk)).returncode == 1
    finally:
        home.close()
