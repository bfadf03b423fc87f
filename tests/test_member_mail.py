"""Confidential mail to a list member without a pinned key is held, the member gets one
content-free note, and pinning a key releases the held mail encrypted to it (issue 9, item 8:
"a member with no usable key"), with real gpg homes and the relay delivering to a sink."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from seclistd import db
from seclistd.list_models import Member
from seclistd.mail import verp
from seclistd.models import Outbox
from seclistd.workflows import member_mail, member_states
from tests.components import Sink
from tests.test_openpgp import REPORTER, World, make_world

SECRET = "The fix for the heap overflow lands in 2.3.1."


@pytest.fixture
def world(tmp_path: Path, sink: Sink) -> Iterator[World]:
    with make_world(tmp_path, sink) as w:
        yield w


def add_member(world: World, fingerprint: str | None = None) -> int:
    with db.transaction(world.factory) as session:
        member = member_states.add_member(
            session, list_name="distributors", email=REPORTER, organization="Seven-Corp",
            actor="operator", now=world.now(), fingerprint=fingerprint)
        session.flush()
        return member.id


def notify(world: World, member_id: int, n: int) -> None:
    with db.transaction(world.factory) as session:
        member = session.get(Member, member_id)
        member_mail.mail_member(session, world.now(), world.settings, member,
                                kind="test_notice", subject=f"Notice {n}", body=SECRET)


def rows(world: World) -> list[Outbox]:
    with world.factory() as session:
        return list(session.scalars(select(Outbox).order_by(Outbox.id)))


def test_member_without_key_gets_one_note_and_nothing_confidential(world: World):
    member_id = add_member(world)
    notify(world, member_id, 1)
    notify(world, member_id, 2)
    world.deliver()

    kinds = [(r.kind, r.status) for r in rows(world)]
    assert kinds == [("test_notice", "held"), (member_mail.KEY_NEEDED, "sent"),
                     ("test_notice", "held")]
    [note] = world.sink.to(REPORTER)  # one note for two held notices, nothing else
    text = note.message.get_body().get_content()
    assert SECRET not in note.raw.decode("utf-8", "replace")
    assert "OpenPGP key" in text and "gpg --export --armor" in text
    with world.factory() as session:
        token = session.get(Member, member_id).bounce_token
    assert note.mail_from == verp.bounce_address("security@example.org", token)


def test_pinning_a_key_releases_held_mail_encrypted_to_it(world: World):
    member_id = add_member(world)
    notify(world, member_id, 1)
    world.deliver()
    world.project.gpg.import_keys(world.reporter.export(world.reporter_fpr))
    with db.transaction(world.factory) as session:
        member = session.get(Member, member_id)
        member.fingerprint = world.reporter_fpr
        assert member_mail.release_held(session, world.now(), member) == 1
    world.deliver()

    notices = [r for r in world.sink.to(REPORTER)
               if r.message.get_content_type() == "multipart/encrypted"]
    assert len(notices) == 1
    ok, plain = world.reporter.decrypt(notices[0].raw)
    assert ok and SECRET.encode() in plain
    assert SECRET.encode() not in b"".join(r.raw for r in world.sink.to(REPORTER))
    # Later mail to the member goes out encrypted at once, with no new note.
    notify(world, member_id, 2)
    world.deliver()
    assert [r.kind for r in rows(world)].count(member_mail.KEY_NEEDED) == 1
    assert all(r.status == "sent" for r in rows(world))


def test_a_key_is_never_taken_from_the_keyring_for_a_member(world: World):
    """The operator imported a key with the member's address: not proof, the row stays held."""
    member_id = add_member(world)
    notify(world, member_id, 1)
    world.project.gpg.import_keys(world.reporter.export(world.reporter_fpr))
    from seclistd import relay

    with db.transaction(world.factory) as session:
        [held] = [r for r in session.scalars(select(Outbox)) if r.status == "held"]
        row = relay.retry(session, world.now(), held.id,
                          find_key=lambda _to: world.reporter_fpr)
        assert row.encrypt_to is None
    world.deliver()
    assert not any(r.message.get_content_type() == "multipart/encrypted"
                   for r in world.sink.to(REPORTER))
    assert [r.status for r in rows(world) if r.kind == "test_notice"] == ["held"]


def test_unusable_key_holds_confidential_mail_but_not_a_content_free_note(world: World):
    """The pinned key is not in the keyring (as for a key gpg can no longer use): the notice
    is held, a content-free note still reaches the member, in plaintext."""
    from seclistd.outbox import enqueue

    member_id = add_member(world, fingerprint=world.mallory_fpr)  # never imported
    notify(world, member_id, 1)
    with db.transaction(world.factory) as session:
        member = session.get(Member, member_id)
        enqueue(session, world.now(), world.settings, kind="member_note", to=member.email,
                subject="Your membership", body="Your key cannot be used.", member=member,
                confidential=False)
    world.deliver()
    assert {r.kind: r.status for r in rows(world)} == {"test_notice": "held",
                                                       "member_note": "sent"}
    [note] = world.sink.to(REPORTER)
    assert note.message.get_content_type() == "text/plain"
    assert "Your key cannot be used." in note.message.get_content()


def test_nothing_confidential_reaches_a_suspended_member_until_it_is_resumed(world: World):
    world.project.gpg.import_keys(world.reporter.export(world.reporter_fpr))
    member_id = add_member(world, fingerprint=world.reporter_fpr)
    notify(world, member_id, 1)  # waiting in the outbox when the member is suspended
    with db.transaction(world.factory) as session:
        member = session.get(Member, member_id)
        member_states.change_state(session, member, "suspend", actor="bounces",
                                   now=world.now(), reason="mail to it bounced")
    notify(world, member_id, 2)  # while suspended
    world.deliver()
    assert world.sink.to(REPORTER) == []
    assert {r.status for r in rows(world)} == {"held"}
    assert all(r.last_error == member_mail.SUSPENDED for r in rows(world))

    with db.transaction(world.factory) as session:
        member = session.get(Member, member_id)
        member_states.change_state(session, member, "resume", actor="operator",
                                   now=world.now())
    world.deliver()
    delivered = world.sink.to(REPORTER)
    assert len(delivered) == 2
    for received in delivered:
        assert received.message.get_content_type() == "multipart/encrypted"
        ok, plain = world.reporter.decrypt(received.raw)
        assert ok and SECRET.encode() in plain


def test_a_removed_members_waiting_mail_is_never_sent(world: World):
    world.project.gpg.import_keys(world.reporter.export(world.reporter_fpr))
    member_id = add_member(world, fingerprint=world.reporter_fpr)
    notify(world, member_id, 1)
    with db.transaction(world.factory) as session:
        member = session.get(Member, member_id)
        member_states.change_state(session, member, "remove", actor="operator",
                                   now=world.now(), reason="left the distribution")
    world.deliver()
    assert world.sink.to(REPORTER) == []
    [row] = rows(world)
    assert row.status == "failed" and "removed" in row.last_error
    with db.transaction(world.factory) as session, pytest.raises(ValueError):
        member_mail.mail_member(session, world.now(), world.settings,
                                session.get(Member, member_id), kind="test_notice",
                                subject="late", body=SECRET)
