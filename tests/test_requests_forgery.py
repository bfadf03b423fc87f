"""Forged vouches, approvals and key proofs on join requests, with real gpg: each one is
refused with the rule that failed, recorded on the request, and leaves it as it was."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from sqlalchemy import func, select

from seclistd.list_models import Member, Vouch
from seclistd.models import HonouredSignature, Outbox
from tests.components import Sink
from tests.pgp import entity, signed_mail
from tests.test_openpgp import _forwarded, _mixed
from tests.test_requests import (
    ALICE,
    APPLICANT,
    CRASH,
    MALLORY,
    World,
    answered_to_verifying,
    make_world,
    reply,
    signed_by,
    token_from,
)


@pytest.fixture
def world(tmp_path: Path, sink: Sink) -> Iterator[World]:
    with make_world(tmp_path, sink) as w:
        # Mallory's key is known to the keyring (it came with some mail), as is the rule.
        w.project.gpg.import_keys(w.mallory.export(w.mallory_fpr))
        yield w


def refusals(world: World, request_id: str) -> list[str]:
    return [e.detail for e in world.request(request_id).events
            if e.action == "command_refused"]


def untouched(world: World, request_id: str, state: str = "verifying") -> None:
    req = world.request(request_id)
    assert req.state == state and req.vouches == []
    assert "vouch" not in [e.action for e in req.events]
    with world.factory() as session:
        assert session.scalar(select(func.count()).select_from(Vouch)) == 0


def vouch_text(request_id: str) -> str:
    return f"X-VOUCH: {request_id}\n\nThey are fine."


def _forgeries(world: World, request_id: str) -> dict[str, tuple[bytes, str]]:
    """name -> (raw mail, the rule its refusal names)."""
    good = vouch_text(request_id)
    forged = {
        "unsigned": ((f"From: {CRASH}\r\nTo: security@example.org\r\nSubject: vouch\r\n"
                      f"Message-ID: <v1@override.example>\r\n\r\n{good}\r\n").encode(),
                     "not signed"),
        "non-member key": (signed_by(world.mallory, world.mallory_fpr, MALLORY, good),
                           "not the key of any list member"),
        "member's address, other key": (signed_by(world.mallory, world.mallory_fpr, CRASH,
                                                  good),
                                        "not by the key on record"),
        "forwarded": (signed_mail(CRASH, "fwd", signed := _mixed(
            entity("See the forwarded vouch below."), _forwarded(good)),
            world.crash.sign(signed, world.crash_fpr)), "must name its request once"),
    }
    return forged


@pytest.mark.parametrize("name", ["unsigned", "non-member key", "member's address, other key",
                                  "forwarded"])
def test_forged_vouches_count_for_nothing(world: World, name: str):
    request_id = answered_to_verifying(world)
    raw, rule = _forgeries(world, request_id)[name]
    outcome = world.ingest(raw)
    assert outcome.route == "join_command"
    untouched(world, request_id)
    [refusal] = refusals(world, request_id)
    assert rule in refusal, refusal
    with world.factory() as session:
        [told] = session.scalars(select(Outbox).where(Outbox.kind == "command_refused"))
        body = message_from_bytes(told.raw, policy=policy.default).get_body().get_content()
        assert "They are fine" not in body and told.request_id == request_id


def test_a_suspended_member_cannot_vouch(world: World):
    world.add_member(MALLORY, "Mallory", "Evil Distro", world.mallory_fpr, state="suspended")
    request_id = answered_to_verifying(world)
    world.ingest(signed_by(world.mallory, world.mallory_fpr, MALLORY, vouch_text(request_id)))
    untouched(world, request_id)
    [refusal] = refusals(world, request_id)
    assert "suspended" in refusal


def test_a_vouch_is_spent_once(world: World):
    request_id = answered_to_verifying(world)
    signed = entity(vouch_text(request_id))
    signature = world.crash.sign(signed, world.crash_fpr)
    world.ingest(signed_mail(CRASH, "vouch", signed, signature, message_id="<v-1@o.example>"))
    assert len(world.request(request_id).vouches) == 1
    world.ingest(signed_mail(CRASH, "vouch again", signed, signature,
                             message_id="<v-2@o.example>"))
    assert len(world.request(request_id).vouches) == 1
    [refusal] = refusals(world, request_id)
    assert "already used once" in refusal
    with world.factory() as session:
        assert session.scalar(select(func.count()).select_from(HonouredSignature)) == 1


@pytest.mark.parametrize(("age", "rule"), [
    (dt.timedelta(days=31), "older than 30 days"),
    (-dt.timedelta(hours=2), "in the future"),
])
def test_vouch_signatures_too_old_or_from_the_future(world: World, age: dt.timedelta,
                                                      rule: str):
    request_id = answered_to_verifying(world)
    raw = signed_by(world.crash, world.crash_fpr, CRASH, vouch_text(request_id))
    world.ingest(raw, at=world.now() + age)
    untouched(world, request_id)
    [refusal] = refusals(world, request_id)
    assert rule in refusal


def _to_review(world: World) -> str:
    request_id = answered_to_verifying(world)
    world.deliver()
    world.ingest(reply(f"[{request_id}] token", f"Token: {token_from(world)}"))
    world.ingest(signed_by(world.crash, world.crash_fpr, CRASH, vouch_text(request_id)))
    assert world.request(request_id).state == "pending_review"
    return request_id


@pytest.mark.parametrize(("sender", "signer", "rule"), [
    (MALLORY, "mallory", "no key on record in [team]"),
    (ALICE, "mallory", "not by the key on record"),
    (CRASH, "crash", "no key on record in [team]"),  # a member, but not the team
])
def test_approval_needs_a_team_key(world: World, sender: str, signer: str, rule: str):
    request_id = _to_review(world)
    home, fpr = ((world.mallory, world.mallory_fpr) if signer == "mallory"
                 else (world.crash, world.crash_fpr))
    world.ingest(signed_by(home, fpr, sender, f"X-REQUEST: {request_id}\nX-APPROVE"))
    assert world.request(request_id).state == "pending_review"
    with world.factory() as session:
        assert session.scalar(select(Member).where(Member.request_id == request_id)) is None
    [refusal] = refusals(world, request_id)
    assert rule in refusal


def test_a_team_command_naming_a_request_and_a_case_is_refused(world: World):
    request_id = _to_review(world)
    world.ingest(signed_by(world.alice, world.alice_fpr, ALICE,
                           f"X-REQUEST: {request_id}\nX-CASE: SEC-2026-0001\nX-APPROVE"))
    assert world.request(request_id).state == "pending_review"
    [refusal] = refusals(world, request_id)
    assert "never both" in refusal


def test_a_signed_deny_carries_its_note(world: World):
    request_id = _to_review(world)
    world.ingest(signed_by(world.alice, world.alice_fpr, ALICE,
                           f"X-REQUEST: {request_id}\nX-DENY\n\nYou rebuild another distro."))
    req = world.request(request_id)
    assert req.state == "denied" and req.decided_by == ALICE


def test_a_token_from_another_address_proves_nothing(world: World):
    request_id = answered_to_verifying(world)
    world.deliver()
    token = token_from(world)
    world.ingest(reply(f"[{request_id}] token", f"Token: {token}", sender=MALLORY))
    req = world.request(request_id)
    assert req.key_proved_at is None and req.token_sha256 is not None
    assert "token_refused" in [e.action for e in req.events]
    # The real applicant's answer still works afterwards.
    world.ingest(reply(f"[{request_id}] token", f"Token: {token}"))
    assert world.request(request_id).key_proved_at is not None


def test_a_later_key_with_a_forged_from_unpins_nothing(world: World):
    request_id = _to_review(world)
    proved = world.request(request_id).key_proved_at
    mallory_key = world.mallory.export(world.mallory_fpr)
    # A mail claiming to be the applicant offers another key: the pinned, proved key stays,
    # and the request stays under review (no denial of service by a forged From).
    world.ingest(reply(f"[{request_id}] new key", "Here is our new key.", key=mallory_key))
    req = world.request(request_id)
    assert req.fingerprint == world.applicant_fpr and req.key_proved_at == proved
    assert req.state == "pending_review"
    assert req.pending_fingerprint == world.mallory_fpr and req.pending_token_sha256
    assert "key_offered" in [e.action for e in req.events]
    assert "key_replaced" not in [e.action for e in req.events]
    # Its token went to the applicant's mailbox, encrypted to the offered key: the forger
    # holds the key but never sees the mail.
    with world.factory() as session:
        [token_mail] = session.scalars(select(Outbox).where(
            Outbox.kind == "request_token", Outbox.encrypt_to == world.mallory_fpr))
        assert token_mail.to_addr == APPLICANT and token_mail.must_encrypt
    approve = world.cli("requests", "approve", request_id)
    assert approve.returncode == 0, approve.stderr
    with world.factory() as session:
        member = session.scalar(select(Member).where(Member.request_id == request_id))
        assert member is not None and member.fingerprint == world.applicant_fpr
    assert world.request(request_id).applicant == APPLICANT


def test_a_new_key_replaces_the_pinned_one_once_its_token_comes_back(world: World):
    request_id = _to_review(world)
    new_fpr = world.applicant.generate("Acidburn (2027)", APPLICANT)
    world.ingest(reply(f"[{request_id}] new key", "Our key changed.",
                       key=world.applicant.export(new_fpr)))
    assert world.request(request_id).fingerprint == world.applicant_fpr
    world.deliver()
    tokens = [re.search(r"^Token: ([0-9a-f]{32})\s*$", world.text_of(r, world.applicant), re.M)
              for r in world.mails_to(APPLICANT)
              if r.message.get_content_type() == "multipart/encrypted"]
    new_token = [m.group(1) for m in tokens if m][-1]
    # Answered from another address, it proves nothing; from the applicant's, it pins.
    world.ingest(reply(f"[{request_id}] token", f"Token: {new_token}", sender=MALLORY))
    assert world.request(request_id).fingerprint == world.applicant_fpr
    world.ingest(reply(f"[{request_id}] token", f"Token: {new_token}"))
    req = world.request(request_id)
    assert req.fingerprint == new_fpr and req.key_proved_at is not None
    assert req.pending_fingerprint is None and req.pending_token_sha256 is None
    assert req.state == "pending_review"
    assert "key_replaced" in [e.action for e in req.events]
