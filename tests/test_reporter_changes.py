"""A From header pins no key and changes no credit (issue 8 item 5), with real gpg homes.

The first mail of a report may pin its key (trust on first use); later keys and credit wishes
need the pinned key's signature or the one-time code mailed to the reporter's address."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from seclistd import config, db
from seclistd.models import Event, Message, Outbox, PendingChange
from seclistd.workflows import lifecycle
from tests.components import Sink, write_config
from tests.pgp import encrypted_mail, entity, headers, signed_mail, with_key_attached
from tests.test_openpgp import REPORT_TEXT, REPORTER, World, make_world

MALLORY = "mallory@example.net"


@pytest.fixture
def world(tmp_path: Path, sink: Sink) -> Iterator[World]:
    with make_world(tmp_path, sink) as w:
        yield w


def reply(subject: str, body: bytes, *, sender: str = REPORTER, extra: str = "") -> bytes:
    """A reply on a case: headers, then a MIME entity (its own Content-Type included)."""
    return headers(sender, subject, f"<{uuid.uuid4().hex}@example.net>", extra).encode() + body


def forged(world: World, case_id: str, text: str) -> bytes:
    """Mallory writes as the reporter, from her own return path, offering her own key."""
    return reply(f"Re: [{case_id}] update",
                 with_key_attached(text, world.mallory.export(world.mallory_fpr)),
                 extra=f"Return-Path: <{MALLORY}>\r\n")


def actions(world: World, case_id: str) -> list[str]:
    return [e.action for e in world.events(case_id)]


def event(world: World, case_id: str, action: str) -> Event:
    [found] = [e for e in world.events(case_id) if e.action == action]
    return found


def code_in(world: World, to: str) -> tuple[str, str]:
    """(code, Message-ID) of the confirmation mail delivered to ``to`` in plaintext."""
    [mail] = [r for r in world.sink.to(to) if "Please confirm" in str(r.message["Subject"])]
    body = mail.message.get_body().get_content()
    return re.search(r"^Code: ([0-9a-f]{32})\r?$", body, re.M).group(1), mail.message["Message-ID"]


def answer(world: World, case_id: str, text: str, at: dt.datetime | None = None):
    from seclistd.intake.store import accept

    raw = reply(f"Re: [{case_id}] Please confirm a change", entity(text))
    return accept(world.factory, world.settings, raw, source="ingest", now=at or world.now())


def test_forged_reply_pins_no_key_and_changes_no_credit(world: World):
    case_id = world.open_case()  # a plain report: no key, "Credit: Rita Reporter"
    assert world.case(case_id).credit == "Rita Reporter"
    world.ingest(forged(world, case_id, "Credit: Mallory the Great\nUse my new key."))

    case = world.case(case_id)
    assert case.reporter_key is None and case.credit == "Rita Reporter"
    unverified = event(world, case_id, "change_unverified")
    assert world.mallory_fpr in unverified.detail and "Mallory the Great" in unverified.detail
    assert "nothing changed" in unverified.detail

    # The team's next answer goes to the reporter, in plaintext as before: not to Mallory's key.
    with db.transaction(world.factory) as session:
        lifecycle.act(session, world.now(), world.settings, case_id,
                      lifecycle.Request(action="reply", text="We are looking into it."),
                      "alice@example.org")
    world.deliver()
    assert world.sink.to(MALLORY) == []
    [answer_mail] = [r for r in world.sink.to(REPORTER) if "looking into" in r.raw.decode()]
    assert answer_mail.message.get_content_type() == "text/plain"
    # The reporter was asked, at their own address, whether they want the change.
    code_in(world, REPORTER)
    # The team was told that nothing changed and why.
    plains = [world.alice.decrypt(r.message.get_payload()[1].get_payload(decode=True))[1]
              for r in world.sink.to("alice@example.org")]
    [forward] = [p for p in plains if b"Reporter wrote" in p]
    assert b"Not applied" in forward and world.mallory_fpr.encode() in forward


def test_forged_reply_cannot_replace_a_pinned_key(world: World):
    raw = reply("Vulnerability report", with_key_attached(
        REPORT_TEXT, world.reporter.export(world.reporter_fpr)))
    case_id = world.ingest(raw).case_id
    assert world.case(case_id).reporter_key == world.reporter_fpr
    assert "trust on first use" in event(world, case_id, "key_pinned").detail

    world.ingest(forged(world, case_id, "Credit: Mallory"))
    case = world.case(case_id)
    assert (case.reporter_key, case.credit) == (world.reporter_fpr, "Rita Reporter")
    world.deliver()
    # The code goes to the reporter encrypted to the pinned key: Mallory cannot read it.
    mails = world.sink.to(REPORTER)
    assert mails and all(r.message.get_content_type() == "multipart/encrypted" for r in mails)
    plains = []
    for mail in mails:
        armored = mail.message.get_payload()[1].get_payload(decode=True)
        assert not world.mallory.decrypt(armored)[0]
        ok, plain = world.reporter.decrypt(armored)
        assert ok
        plains.append(plain)
    assert any(b"Please confirm a change" in p and b"Confirm: CODE" in p for p in plains)
    assert world.sink.to(MALLORY) == []


def test_the_code_answered_from_the_reporters_address_applies_the_change(world: World):
    # Encrypted report without a key: the receipt is held, never sent in plaintext.
    armored = world.reporter.encrypt(REPORT_TEXT.encode(), world.project_fpr)
    case_id = world.ingest(encrypted_mail(REPORTER, "report", armored)).case_id
    world.deliver()
    assert world.sink.to(REPORTER) == []

    # The reporter sends their key and a new credit wish in a plain reply.
    world.ingest(reply(f"Re: [{case_id}] my key", with_key_attached(
        "Here is my key.\nPlease credit me as Rita R. (GitHub @rita-r)",
        world.reporter.export(world.reporter_fpr))))
    assert world.case(case_id).reporter_key is None
    world.deliver()
    code, message_id = code_in(world, REPORTER)  # carries nothing of the case: plaintext

    # Quoting the mail back, however it is quoted, confirms nothing.
    quoted = f"> Confirm: {code}\n> Code: {code}\nConfirmation code: {code}\nCode: {code}"
    answer(world, case_id, "What is this?\n\n" + quoted)
    assert world.case(case_id).reporter_key is None
    assert "unknown code" not in [e.detail for e in world.events(case_id)]

    answer(world, case_id, f"Yes, that was me.\n\nConfirm: {code}\n")
    case = world.case(case_id)
    assert case.reporter_key == world.reporter_fpr
    assert (case.credit, case.credit_github) == ("Rita R", "rita-r")
    assert REPORTER in event(world, case_id, "change_confirmed").detail
    # The held receipt now goes out, encrypted to the confirmed key.
    world.deliver()
    receipts = [r for r in world.sink.to(REPORTER)
                if r.message.get_content_type() == "multipart/encrypted"]
    assert receipts
    ok, plain = world.reporter.decrypt(receipts[0].message.get_payload()[1]
                                       .get_payload(decode=True))
    assert ok and b"automatic confirmation" in plain

    # A code works once.
    answer(world, case_id, f"Confirm: {code}")
    assert event(world, case_id, "change_not_confirmed").detail == "code already used"


def test_an_expired_or_unknown_code_changes_nothing(world: World):
    case_id = world.open_case()
    world.ingest(forged(world, case_id, "Credit: Mallory"))
    world.deliver()
    code, _ = code_in(world, REPORTER)
    answer(world, case_id, f"Confirm: {'0' * 32}")
    answer(world, case_id, f"Confirm: {code}", at=world.now() + dt.timedelta(days=8))
    assert world.case(case_id).credit == "Rita Reporter"
    assert [e.detail for e in world.events(case_id) if e.action == "change_not_confirmed"] == [
        "unknown code", "code expired"]
    with world.factory() as session:
        [pending] = session.scalars(select(PendingChange))
        assert pending.confirmed_at is None and code not in pending.token_sha256


def signed_reply(world: World, case_id: str, signed: bytes, fpr: str,
                 extra: str = "") -> bytes:
    signed = re.sub(rb"\r?\n", b"\r\n", signed)  # what is signed is canonical (RFC 3156)
    raw = signed_mail(REPORTER, f"Re: [{case_id}] update", signed,
                      world.reporter.sign(signed, fpr))
    return raw.replace(b"MIME-Version: 1.0\r\n", f"MIME-Version: 1.0\r\n{extra}".encode(), 1)


def test_a_reply_signed_by_the_pinned_key_changes_key_and_credit_once(world: World):
    raw = reply("Vulnerability report", with_key_attached(
        REPORT_TEXT, world.reporter.export(world.reporter_fpr)))
    case_id = world.ingest(raw).case_id
    new_fpr = world.reporter.generate("Rita Reporter", REPORTER)

    first = entity("Please credit me as Rita the Finder")
    first_mail = signed_reply(world, case_id, first, world.reporter_fpr)
    world.ingest(first_mail)
    assert world.case(case_id).credit == "Rita the Finder"
    assert "signed by the pinned key" in event(world, case_id, "change_signed").detail

    world.ingest(signed_reply(world, case_id, entity("Please credit me as R. Reporter"),
                              world.reporter_fpr))
    assert world.case(case_id).credit == "R. Reporter"

    # The first signed mail again, as a new message: its signature is spent.
    world.ingest(first_mail.replace(b"Message-ID: <", b"Message-ID: <again-", 1))
    assert world.case(case_id).credit == "R. Reporter"
    assert "used before" in event(world, case_id, "change_unverified").detail

    # The new key inside the signed entity, signed by the pinned key: it replaces it.
    rotate = with_key_attached("My new key is attached.", world.reporter.export(new_fpr))
    world.ingest(signed_reply(world, case_id, rotate, world.reporter_fpr))
    assert world.case(case_id).reporter_key == new_fpr
    assert actions(world, case_id).count("change_signed") == 3


def test_a_key_outside_the_signed_entity_is_not_covered_by_the_signature(world: World):
    import base64

    raw = reply("Vulnerability report", with_key_attached(
        REPORT_TEXT, world.reporter.export(world.reporter_fpr)))
    case_id = world.ingest(raw).case_id
    # A genuine signed mail of the reporter, with Mallory's key added as an Autocrypt header.
    keydata = base64.b64encode(world.mallory.run("--export", world.mallory_fpr)).decode()
    folded = "\r\n ".join(keydata[i:i + 72] for i in range(0, len(keydata), 72))
    signed = entity("Any news?")
    world.ingest(signed_reply(world, case_id, signed, world.reporter_fpr,
                              extra=f"Autocrypt: addr={REPORTER}; keydata=\r\n {folded}\r\n"))
    assert world.case(case_id).reporter_key == world.reporter_fpr
    assert "not covered by the signature" in event(world, case_id, "change_unverified").detail


def test_a_reply_signed_by_another_key_is_unverified(world: World):
    raw = reply("Vulnerability report", with_key_attached(
        REPORT_TEXT, world.reporter.export(world.reporter_fpr)))
    case_id = world.ingest(raw).case_id
    world.project.gpg.import_keys(world.mallory.export(world.mallory_fpr))
    signed = re.sub(rb"\r?\n", b"\r\n", with_key_attached(
        "Credit: Mallory", world.mallory.export(world.mallory_fpr)))
    world.ingest(signed_mail(REPORTER, f"Re: [{case_id}] x", signed,
                             world.mallory.sign(signed, world.mallory_fpr)))
    case = world.case(case_id)
    assert (case.reporter_key, case.credit) == (world.reporter_fpr, "Rita Reporter")
    assert "another key" in event(world, case_id, "change_unverified").detail
    with world.factory() as session:
        assert session.scalar(select(Outbox).where(Outbox.kind == "confirm_change")).encrypt_to \
            == world.reporter_fpr



def test_the_same_wish_again_gets_no_second_code(world: World):
    case_id = world.open_case()
    world.ingest(forged(world, case_id, "Credit: Mallory"))
    world.ingest(forged(world, case_id, "Credit: Mallory"))
    with world.factory() as session:
        codes = session.scalars(select(Outbox).where(Outbox.kind == "confirm_change")).all()
        assert len(codes) == 1 and len(session.scalars(select(PendingChange)).all()) == 1
    assert [e.detail.split(":")[0] for e in world.events(case_id)
            if e.action == "change_unverified"] == [
        "asked (no key is pinned on the case)", "asked again (no key is pinned on the case)"]


def test_a_code_from_another_address_confirms_nothing(world: World):
    case_id = world.open_case()
    world.ingest(forged(world, case_id, "Credit: Mallory the Great"))
    world.deliver()
    code, _ = code_in(world, REPORTER)
    # Mallory got the code somehow (a forwarded mail) and answers it from her own address.
    raw = reply(f"Re: [{case_id}] Please confirm a change", entity(f"Confirm: {code}\n"),
                sender=MALLORY)
    world.ingest(raw)
    case = world.case(case_id)
    assert case.credit == "Rita Reporter" and case.reporter_key is None
    assert "change_confirmed" not in actions(world, case_id)
    # The reporter's own answer still works: the code was not spent by Mallory's try.
    answer(world, case_id, f"Confirm: {code}\n")
    assert world.case(case_id).credit == "Mallory the Great"


def test_an_encrypted_reply_does_not_hold_the_answers(world: World):
    case_id = world.open_case()  # plain report, no key
    junk = "-----BEGIN PGP MESSAGE-----\r\n\r\nhQEMA1234\r\n-----END PGP MESSAGE-----\r\n"
    world.ingest(reply(f"Re: [{case_id}] more", entity(junk),
                       extra=f"Return-Path: <{MALLORY}>\r\n"))
    armored = world.mallory.encrypt(b"More details.", world.project_fpr)
    world.ingest(encrypted_mail(REPORTER, f"Re: [{case_id}] more", armored))
    assert not world.case(case_id).encrypted
    assert "came encrypted" in [e for e in world.events(case_id) if e.action == "reply"][-1].detail
    with db.transaction(world.factory) as session:
        lifecycle.act(session, world.now(), world.settings, case_id,
                      lifecycle.Request(action="reply", text="Thanks, we are on it."),
                      "alice@example.org")
    world.deliver()
    assert [r for r in world.sink.to(REPORTER) if "on it" in r.raw.decode()]
    with world.factory() as session:
        assert not session.scalars(select(Outbox).where(Outbox.status == "held")).all()


def test_an_encrypted_reply_reaches_a_member_without_a_key_only_as_a_notice(world: World):
    # Alice has no fingerprint on record: her copies can only go out in plaintext.
    path = write_config(world.tmp, relay_port=world.sink.port, team=["alice@example.org"],
                        gnupg_home=world.project.path, gnupg_key=world.project_fpr)
    w = dataclasses.replace(world, settings=config.load(str(path)))
    case_id = w.open_case()  # a plain report
    armored = w.mallory.encrypt(b"Content-Type: text/plain\r\n\r\nThe secret is hunter2.\r\n",
                                w.project_fpr)
    w.ingest(encrypted_mail(REPORTER, f"Re: [{case_id}] more", armored))
    w.deliver()
    to_alice = [r.raw.decode() for r in w.sink.to("alice@example.org")]
    assert any("Encrypted case: content withheld" in m for m in to_alice)
    assert not [m for m in to_alice if "hunter2" in m]
    with w.factory() as session:  # the text itself is on the case, for `cases show`
        texts = session.scalars(select(Message.text).where(Message.case_id == case_id)).all()
    assert any("hunter2" in (t or "") for t in texts)
