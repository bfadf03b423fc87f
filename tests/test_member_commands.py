"""A member's own signed mail, with real gpg homes: ``X-LEAVE`` removes the member, a mail
signed with the pinned key that carries a new key rotates it once the token mailed
encrypted to the new key comes back. Every forgery (unsigned, another key, a second
member's key under the first one's From, replayed, too old, from the future, inside a
forwarded message, a token from another address or for another member) changes nothing,
is recorded, and the sender is told which rule failed, never what it sent."""

from __future__ import annotations

import base64
import datetime as dt
import re
from collections.abc import Iterator
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from sqlalchemy import select

from seclistd import db
from seclistd.list_models import Member
from seclistd.models import Message, Outbox
from seclistd.workflows import member_mail, member_states
from tests.components import Received, Sink
from tests.pgp import Home, entity, headers, new_home, signed_mail, with_key_attached
from tests.test_openpgp import _forwarded, _mixed
from tests.test_requests import ALICE, CRASH, MALLORY, World, make_world, reply, signed_by

DADE = "dade@zero.example"  # a member with no key on record


@pytest.fixture
def world(tmp_path: Path, sink: Sink) -> Iterator[World]:
    with make_world(tmp_path, sink) as w:
        w.project.gpg.import_keys(w.mallory.export(w.mallory_fpr))
        yield w


# --- helpers -------------------------------------------------------------------------------

def members(world: World, email: str = CRASH) -> dict[str, Member]:
    """The memberships of ``email`` by list, with their events loaded."""
    with world.factory() as session:
        found = list(session.scalars(select(Member).where(Member.email == email)))
        for member in found:
            _ = list(member.events)
        session.expunge_all()
        return {m.list_name: m for m in found}


def actions(world: World, email: str = CRASH, list_name: str = "oci") -> list[str]:
    return [e.action for e in members(world, email)[list_name].events]


def details(world: World, action: str, email: str = CRASH, list_name: str = "oci") -> list[str]:
    return [e.detail for e in members(world, email)[list_name].events if e.action == action]


def mallory_member(world: World) -> None:
    """Mallory is a member too (of oci), with her own pinned key."""
    world.add_member(MALLORY, "Mallory", "Evil Distro", world.mallory_fpr)


def outbox(world: World, kind: str) -> list[Outbox]:
    with world.factory() as session:
        rows = list(session.scalars(select(Outbox).where(Outbox.kind == kind)
                                    .order_by(Outbox.id)))
        session.expunge_all()
        return rows


def plain_body(row: Outbox) -> str:
    return message_from_bytes(row.raw, policy=policy.default).get_body().get_content()


def leave_text(arg: str = "") -> str:
    return f"X-LEAVE{': ' + arg if arg else ''}\n\nWe are dropping out of this list."


def rotation_mail(world: World, new_key: bytes, *, signer: tuple[Home, str] | None = None,
                  sender: str = CRASH, message_id: str | None = None) -> bytes:
    """A mail from ``sender`` whose signed entity carries ``new_key`` as an attachment,
    signed by ``signer`` (home, fingerprint; default: CrashOverride's pinned key)."""
    home, fpr = signer or (world.crash, world.crash_fpr)
    signed = signable_with_key("Our key changes: the new one is attached.", new_key)
    return signed_mail(sender, "new key", signed, home.sign(signed, fpr), message_id=message_id)


def signable_with_key(text: str, key: bytes) -> bytes:
    """An entity with the key attached, its line ends CRLF as the signature covers them."""
    return with_key_attached(text, key.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))


def token_mail(world: World, to: str = CRASH) -> Received:
    """The rotation token mail as ``to`` received it (its subject is hidden by the
    encryption: found by its Message-ID)."""
    ids = {r.message_id for r in outbox(world, "member_key_token") if r.to_addr == to}
    [mail] = [r for r in world.mails_to(to) if r.message["Message-ID"] in ids]
    assert mail.message.get_content_type() == "multipart/encrypted"
    assert b"Token:" not in mail.raw
    return mail


def token_of(world: World, mail: Received, home: Home) -> str:
    match = re.search(r"^Token: ([0-9a-f]{32})\s*$", world.text_of(mail, home), re.M)
    assert match
    return match.group(1)


def answer(token: str, mail: Received | None, sender: str = CRASH) -> bytes:
    return reply("Re: confirm your new key", f"Token: {token}\n", sender=sender,
                 in_reply_to=mail.message["Message-ID"] if mail else None)


# --- X-LEAVE ------------------------------------------------------------------------------

def test_a_signed_leave_removes_the_member_from_every_list(world: World):
    outcome = world.ingest(signed_by(world.crash, world.crash_fpr, CRASH, leave_text()))
    assert outcome.route == "member_command" and outcome.status == "processed"
    found = members(world)
    assert {m.state for m in found.values()} == {"removed"}
    for member in found.values():
        [removal] = [e for e in member.events if e.action == "remove"]
        assert removal.actor == CRASH and removal.to_state == "removed"
    world.deliver()
    told = [world.text_of(r, world.crash) for r in world.mails_to(CRASH)]
    assert len(told) == 2 and all("join again" in t for t in told)
    team = [world.text_of(r, world.alice) for r in world.mails_to(ALICE)]
    assert sum(CRASH in t and "own request" in t for t in team) == 2


def test_a_leave_naming_a_list_ends_only_that_membership(world: World):
    world.ingest(signed_by(world.crash, world.crash_fpr, CRASH, leave_text("k8s")))
    found = members(world)
    assert (found["k8s"].state, found["oci"].state) == ("removed", "active")


def _forged_leaves(world: World) -> dict[str, tuple[bytes, str]]:
    """name -> (raw mail, the rule its refusal names)."""
    text = leave_text()
    return {
        "unsigned": (reply("leave", text, sender=CRASH), "not signed"),
        "another key": (signed_by(world.mallory, world.mallory_fpr, CRASH, text),
                        "not by the key on record"),
        "a second member's key": (signed_by(world.mallory, world.mallory_fpr, CRASH, text),
                                  "belongs to another member"),
        "forwarded": (signed_mail(CRASH, "fwd", signed := _mixed(
            entity("See the forwarded mail below."), _forwarded(text)),
            world.crash.sign(signed, world.crash_fpr)), "must start with the line X-LEAVE"),
        "a list it is not on": (signed_by(world.crash, world.crash_fpr, CRASH,
                                          leave_text("elsewhere")), "not a member"),
    }


@pytest.mark.parametrize("name", ["unsigned", "another key", "a second member's key",
                                  "forwarded", "a list it is not on"])
def test_forged_leaves_remove_no_one(world: World, name: str):
    if name == "a second member's key":
        mallory_member(world)
    raw, rule = _forged_leaves(world)[name]
    outcome = world.ingest(raw)
    assert outcome.route == "member_command" and outcome.status == "processed"
    assert {m.state for m in members(world).values()} == {"active"}
    if name == "a second member's key":
        assert members(world, MALLORY)["oci"].state == "active"
    [refusal] = details(world, "command_refused")
    assert rule in refusal, refusal
    [told] = outbox(world, "command_refused")
    assert told.to_addr == CRASH
    world.deliver()
    [mail] = world.mails_to(CRASH)
    text = world.text_of(mail, world.crash)
    assert rule in text and "dropping out" not in text


def test_a_leave_signature_is_spent_once(world: World):
    signed = entity(leave_text("k8s"))
    signature = world.crash.sign(signed, world.crash_fpr)
    world.ingest(signed_mail(CRASH, "leave", signed, signature, message_id="<l-1@o.example>"))
    assert members(world)["k8s"].state == "removed"
    # The team adds the member back; the same signed mail, sent again, does nothing.
    with db.transaction(world.factory) as session:
        member_states.add_member(session, list_name="k8s", email=CRASH, organization="O",
                                 fingerprint=world.crash_fpr, actor="test", now=world.now())
    world.ingest(signed_mail(CRASH, "leave again", signed, signature,
                             message_id="<l-2@o.example>"))
    assert members(world)["k8s"].state == "active"
    assert any("already used once" in d for d in details(world, "command_refused",
                                                         list_name="k8s"))


@pytest.mark.parametrize(("age", "rule"), [
    (dt.timedelta(days=31), "older than 30 days"),
    (-dt.timedelta(hours=2), "in the future"),
])
def test_leave_signatures_too_old_or_from_the_future(world: World, age: dt.timedelta,
                                                     rule: str):
    raw = signed_by(world.crash, world.crash_fpr, CRASH, leave_text())
    world.ingest(raw, at=world.now() + age)
    assert {m.state for m in members(world).values()} == {"active"}
    [refusal] = details(world, "command_refused")
    assert rule in refusal


def test_a_refused_leave_that_names_no_member_is_quarantined(world: World):
    outcome = world.ingest(signed_by(world.mallory, world.mallory_fpr, MALLORY, leave_text()))
    assert outcome.status == "quarantined"
    assert "not the key of any list member" in (outcome.reason or "")
    assert {m.state for m in members(world).values()} == {"active"}


def test_refusals_are_capped_per_sender(world: World):
    limit = world.settings.autoreply.max_per_sender_per_day
    for i in range(limit + 2):
        world.ingest(reply(f"leave {i}", leave_text(), sender=CRASH))
    assert len(details(world, "command_refused")) == limit + 2
    assert len(outbox(world, "command_refused")) == limit


# --- key rotation ---------------------------------------------------------------------------

def test_a_key_rotation_signed_with_the_pinned_key(world: World):
    # The key check had suspended the k8s membership; the oci one is active.
    with db.transaction(world.factory) as session:
        k8s = session.scalar(select(Member).where(Member.email == CRASH,
                                                  Member.list_name == "k8s"))
        member_states.change_state(session, k8s, "suspend", actor="seclistd", now=world.now(),
                                   reason=f"the member's key {world.crash_fpr} expired")
    new_fpr = world.crash.generate("CrashOverride 2027", CRASH)
    outcome = world.ingest(rotation_mail(world, world.crash.export(new_fpr)))
    assert outcome.route == "member_key"
    for member in members(world).values():
        assert member.fingerprint == world.crash_fpr  # the old key stays until the proof
        assert member.pending_fingerprint == new_fpr and member.pending_token_sha256
    [row] = outbox(world, "member_key_token")
    assert row.encrypt_to == new_fpr and row.must_encrypt
    world.deliver()
    mail = token_mail(world)
    token = token_of(world, mail, world.crash)
    world.ingest(answer(token, mail))
    found = members(world)
    for member in found.values():
        assert member.fingerprint == new_fpr
        assert member.pending_fingerprint is None and member.pending_token_sha256 is None
        assert "key_rotated" in [e.action for e in member.events]
    assert found["k8s"].state == "active"  # resumed: its key works now
    # The same token again proves nothing more.
    world.ingest(answer(token, mail))
    assert "token_refused" in actions(world)


def test_a_keyless_member_pins_a_key_by_token_and_held_mail_goes_out(world: World):
    dade = new_home()
    try:
        dade_fpr = dade.generate("Dade", DADE)
        dade.gpg.import_keys(world.project.export(world.project_fpr))
        world.add_member(DADE, "Dade", "Zero Linux", None)
        with db.transaction(world.factory) as session:
            member = session.scalar(select(Member).where(Member.email == DADE))
            row = member_mail.mail_member(session, world.now(), world.settings, member,
                                          kind="notice", subject="embargoed", body="secret")
            assert row.status == "held"
            held_id = row.message_id
        world.ingest(reply("my key", "Here is my key.", sender=DADE,
                           key=dade.export(dade_fpr)))
        assert members(world, DADE)["oci"].pending_fingerprint == dade_fpr
        world.deliver()
        mail = token_mail(world, DADE)
        world.ingest(answer(token_of(world, mail, dade), mail, sender=DADE))
        assert members(world, DADE)["oci"].fingerprint == dade_fpr
        world.deliver()
        [held] = [r for r in world.mails_to(DADE) if r.message["Message-ID"] == held_id]
        assert held.message.get_content_type() == "multipart/encrypted"
        assert "secret" in world.text_of(held, dade)
    finally:
        dade.close()


def _autocrypt_outside(world: World) -> bytes:
    """A mail signed by the pinned key, with a new key in an Autocrypt header: the header
    is outside the signed entity, so the signature does not cover it."""
    raw = signed_by(world.crash, world.crash_fpr, CRASH, "Our key changes.")
    data = base64.b64encode(world.mallory.run("--export", world.mallory_fpr)).decode()
    return raw.replace(b"MIME-Version: 1.0\r\n",
                       f"MIME-Version: 1.0\r\nAutocrypt: addr={CRASH}; keydata={data}\r\n"
                       .encode(), 1)


@pytest.mark.parametrize("name", ["unsigned", "another key", "a second member's key",
                                  "forwarded", "outside the signature"])
def test_forged_rotations_change_nothing(world: World, name: str):
    mallory_key = world.mallory.export(world.mallory_fpr)
    if name == "a second member's key":
        mallory_member(world)
    raw = {
        "unsigned": lambda: headers(CRASH, "new key").encode() + with_key_attached(
            "Our new key.", mallory_key),
        "another key": lambda: rotation_mail(world, mallory_key,
                                             signer=(world.mallory, world.mallory_fpr)),
        "a second member's key": lambda: rotation_mail(
            world, mallory_key, signer=(world.mallory, world.mallory_fpr)),
        "forwarded": lambda: headers(CRASH, "fwd").encode() + _mixed(
            entity("Forwarding my signed key change."),
            b"Content-Type: message/rfc822\r\nContent-Disposition: attachment\r\n\r\n"
            + rotation_mail(world, mallory_key)),
        "outside the signature": lambda: _autocrypt_outside(world),
    }[name]()
    world.ingest(raw)
    for member in members(world).values():
        assert member.fingerprint == world.crash_fpr and member.pending_fingerprint is None
    assert outbox(world, "member_key_token") == []
    [why] = details(world, "key_unverified")
    assert world.mallory_fpr in why
    [told] = outbox(world, "member_key_unverified")
    assert told.to_addr == CRASH


def test_a_rotation_signature_is_spent_once(world: World):
    new_fpr = world.crash.generate("CrashOverride 2027", CRASH)
    signed = signable_with_key("New key attached.", world.crash.export(new_fpr))
    signature = world.crash.sign(signed, world.crash_fpr)
    world.ingest(signed_mail(CRASH, "key", signed, signature, message_id="<k-1@o.example>"))
    world.deliver()
    mail = token_mail(world)
    world.ingest(answer(token_of(world, mail, world.crash), mail))
    assert members(world)["oci"].fingerprint == new_fpr
    world.ingest(signed_mail(CRASH, "key", signed, signature, message_id="<k-2@o.example>"))
    # Replayed: the old key is no longer pinned, so the signature is no member's any more.
    assert members(world)["oci"].pending_fingerprint is None
    assert len(outbox(world, "member_key_token")) == 1


def test_a_replayed_rotation_signature_is_refused_while_the_key_is_pinned(world: World):
    new_fpr = world.crash.generate("CrashOverride 2027", CRASH)
    signed = signable_with_key("New key attached.", world.crash.export(new_fpr))
    signature = world.crash.sign(signed, world.crash_fpr)
    world.ingest(signed_mail(CRASH, "key", signed, signature, message_id="<k-1@o.example>"))
    world.ingest(signed_mail(CRASH, "key", signed, signature, message_id="<k-2@o.example>"))
    assert any("already used once" in d for d in details(world, "key_unverified"))
    assert len(outbox(world, "member_key_token")) == 1


@pytest.mark.parametrize(("age", "rule"), [
    (dt.timedelta(days=31), "older than 30 days"),
    (-dt.timedelta(hours=2), "in the future"),
])
def test_rotation_signatures_too_old_or_from_the_future(world: World, age: dt.timedelta,
                                                        rule: str):
    new_fpr = world.crash.generate("CrashOverride 2027", CRASH)
    world.ingest(rotation_mail(world, world.crash.export(new_fpr)), at=world.now() + age)
    assert members(world)["oci"].pending_fingerprint is None
    [why] = details(world, "key_unverified")
    assert rule in why


def test_a_token_from_another_address_proves_nothing(world: World):
    new_fpr = world.crash.generate("CrashOverride 2027", CRASH)
    world.ingest(rotation_mail(world, world.crash.export(new_fpr)))
    world.deliver()
    mail = token_mail(world)
    token = token_of(world, mail, world.crash)
    world.ingest(answer(token, mail, sender=MALLORY))
    member = members(world)["oci"]
    assert member.fingerprint == world.crash_fpr and member.pending_fingerprint == new_fpr
    [refused] = details(world, "token_refused")
    assert MALLORY in refused
    world.ingest(answer(token, mail))
    assert members(world)["oci"].fingerprint == new_fpr


def test_a_token_for_another_member_proves_nothing(world: World):
    mallory_member(world)
    crash_new = world.crash.generate("CrashOverride 2027", CRASH)
    mallory_new = world.mallory.generate("Mallory 2027", MALLORY)
    world.ingest(rotation_mail(world, world.crash.export(crash_new)))
    world.ingest(rotation_mail(world, world.mallory.export(mallory_new),
                               signer=(world.mallory, world.mallory_fpr), sender=MALLORY))
    world.deliver()
    crash_token = token_of(world, token_mail(world), world.crash)
    # Mallory sends CrashOverride's token from her own address, unthreaded.
    world.ingest(answer(crash_token, None, sender=MALLORY))
    assert members(world, MALLORY)["oci"].fingerprint == world.mallory_fpr
    assert members(world, MALLORY)["oci"].pending_fingerprint == mallory_new
    assert members(world)["oci"].fingerprint == world.crash_fpr
    assert "token_refused" in actions(world, MALLORY)


def test_a_member_mail_with_only_its_pinned_key_is_ordinary_mail(world: World):
    raw = headers(CRASH, "A bug in the parser").encode() + with_key_attached(
        "The parser crashes on this input.", world.crash.export(world.crash_fpr))
    outcome = world.ingest(raw)
    assert outcome.route == "new_report" and outcome.case_id
    assert "key_unverified" not in actions(world)
    with world.factory() as session:
        assert session.get(Message, outcome.id).route == "new_report"


def test_an_unsigned_reply_quoting_the_welcome_is_no_leave(world: World):
    text = ("Thanks, glad to be on board!\n\n-----Original Message-----\n"
            "To leave the list, send a signed mail whose first line is\n\nX-LEAVE\n")
    outcome = world.ingest(reply("RE: Welcome", text, sender=CRASH))
    assert outcome.route != "member_command"
    assert {m.state for m in members(world).values()} == {"active"}
    assert "command_refused" not in actions(world)
