"""The list's discussion of an embargoed notice, with real gpg homes and the aiosmtpd sink:
a member's signed review reaches every other member and the team, each copy encrypted to
its recipient alone; unsigned mail and outsiders' mail reach nobody but the handler;
signed X-ACK / X-STATUS show in ``cases show --json`` and forgeries change nothing; the one
reminder a business day before the date; leaks by signed X-LEAK or by a stranger quoting a
copy's token alert the team, count against the right member, and flag repeat leakers.

The notices are sent by ``workflows.announce.send_notice`` (the case is put under embargo
directly: the embargo command itself is tested in ``test_announce.py``)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from seclistd import db
from seclistd.embargo_models import AnnouncementRecipient, Leak
from seclistd.list_models import MemberEvent
from seclistd.models import Case, Outbox
from seclistd.workflows import announce, notice_reminders
from tests.components import Sink, report
from tests.pgp import Home, encrypted_mail, entity
from tests.test_requests import ALICE, APPLICANT, CRASH, MALLORY, World, make_world, reply
from tests.test_requests import signed_by as _signed_by

DADE = "dade@zero.example"  # a member with no key
STRANGER = "someone@forum.example"
REVIEW = "We reviewed the patch: it fixes the overflow and applies to our 1.4 branch."


@pytest.fixture
def world(tmp_path: Path, sink: Sink) -> Iterator[World]:
    with make_world(tmp_path, sink) as w:
        w.project.gpg.import_keys(w.mallory.export(w.mallory_fpr))
        w.project.gpg.import_keys(w.applicant.export(w.applicant_fpr))
        w.add_member(MALLORY, "Mallory", "Evil Distro", w.mallory_fpr)
        w.add_member(APPLICANT, "Acidburn", "Seven Corp", w.applicant_fpr)
        w.add_member(DADE, "Dade", "Zero Linux", None)
        yield w


# --- helpers -------------------------------------------------------------------------------

def _notify(world: World, *, at: dt.datetime | None = None,
            until: dt.datetime | None = None, n: int = 1) -> str:
    """A confirmed case under embargo with its notice sent to list oci and the team."""
    at = at or world.now()
    until = until or at + dt.timedelta(days=5)
    case_id = world.ingest(report(n), at=at).case_id
    assert case_id
    with db.transaction(world.factory) as session:
        case = session.get(Case, case_id)
        assert case is not None
        case.state, case.embargo_until = "embargoed", until
        announce.send_notice(session, at, world.settings, case, actor=ALICE,
                             text="A heap overflow in the parser; the patch follows.",
                             attachments=())
    return case_id


def copy_of(world: World, email: str, case_id: str | None = None) -> tuple[str, str]:
    """(token, Message-ID) of ``email``'s copy of the notice (of ``case_id``, when several)."""
    with world.factory() as session:
        query = select(AnnouncementRecipient).where(AnnouncementRecipient.email == email)
        if case_id is not None:
            query = query.where(AnnouncementRecipient.case_id == case_id)
        copy = session.scalars(query).one()
        row = session.get(Outbox, copy.outbox_id)
        assert row is not None
        return copy.token, row.message_id


def threaded(raw: bytes, in_reply_to: str) -> bytes:
    return raw.replace(b"MIME-Version: 1.0\r\n",
                       f"In-Reply-To: {in_reply_to}\r\nMIME-Version: 1.0\r\n".encode(), 1)


def signed_reply(world: World, home: Home, fpr: str, sender: str, body: str,
                 answering: str = "") -> bytes:
    """A PGP/MIME signed mail from ``sender`` answering ``answering``'s copy (default: the
    sender's own)."""
    _, mid = copy_of(world, answering or sender)
    return threaded(_signed_by(home, fpr, sender, body, subject="Re: Embargoed notice"), mid)


def recipients(world: World, case_id: str) -> dict[str, dict]:
    result = world.cli("--json", "cases", "show", case_id)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    return {r["email"]: r for r in doc["announcement"]["recipients"]}


def fresh(world: World, address: str, seen: int) -> list:
    return world.mails_to(address)[seen:]


def counts(world: World) -> dict[str, int]:
    return {a: len(world.mails_to(a)) for a in (ALICE, CRASH, MALLORY, APPLICANT, DADE)}


def leaks(world: World) -> list[Leak]:
    with world.factory() as session:
        found = list(session.scalars(select(Leak).order_by(Leak.id)))
        session.expunge_all()
        return found


def member_id(world: World, email: str) -> int:
    return world.member(email).id


# --- the discussion ------------------------------------------------------------------------

def test_a_signed_review_reaches_every_other_member_and_the_team_each_encrypted_alone(
        world: World):
    case_id = _notify(world)
    world.deliver()
    before = counts(world)
    outcome = world.ingest(signed_reply(world, world.crash, world.crash_fpr, CRASH, REVIEW))
    assert (outcome.route, outcome.case_id) == ("notice_reply", case_id)
    world.deliver()
    homes = {MALLORY: world.mallory, APPLICANT: world.applicant, ALICE: world.alice}
    for address, home in homes.items():
        [mail] = fresh(world, address, before[address])
        assert mail.message.get_content_type() == "multipart/encrypted"
        assert REVIEW.encode() not in mail.raw
        text = world.text_of(mail, home)
        assert REVIEW in text and f"From: {CRASH}" in text and "via " in text
        # Only its own key opens it.
        encrypted = mail.message.get_payload()[1].get_payload(decode=True)
        for other, other_home in [*homes.items(), (CRASH, world.crash)]:
            if other != address:
                assert not other_home.decrypt(encrypted)[0], (address, other)
    assert fresh(world, CRASH, before[CRASH]) == []  # the author gets no echo
    assert fresh(world, DADE, before[DADE]) == []  # no key: held, never plaintext
    events = [e for e in world_events(world, case_id) if e.action == "notice_reply"]
    assert "re-sent to 3 members (1 held" in events[0].detail


def world_events(world: World, case_id: str) -> list:
    with world.factory() as session:
        case = session.get(Case, case_id)
        assert case is not None
        found = list(case.events)
        session.expunge_all()
        return found


def test_an_unsigned_reply_and_an_outsiders_reach_nobody_but_the_handler(world: World):
    case_id = _notify(world)
    world.deliver()
    before = counts(world)
    _, crash_mid = copy_of(world, CRASH)
    unsigned = reply("Re: Embargoed notice", REVIEW, sender=CRASH, in_reply_to=crash_mid)
    assert world.ingest(unsigned).route == "notice_reply"
    # A forged From with another member's signature is no member's signed reply either.
    forged = signed_reply(world, world.mallory, world.mallory_fpr, CRASH, REVIEW)
    assert world.ingest(forged).route == "notice_reply"
    outsider = reply("Re: Embargoed notice", "I have thoughts on your patch.",
                     sender=STRANGER, in_reply_to=crash_mid)
    assert world.ingest(outsider).case_id == case_id
    world.deliver()
    for member in (CRASH, MALLORY, APPLICANT, DADE):
        assert fresh(world, member, before[member]) == [], member
    handler = [world.text_of(m, world.alice) for m in fresh(world, ALICE, before[ALICE])]
    assert sum(REVIEW in t and "NOT passed on to the list" in t for t in handler) == 2
    assert any("I have thoughts" in t for t in handler)


# --- acknowledgment and vendor status ------------------------------------------------------

def test_signed_ack_and_status_show_in_cases_show(world: World):
    case_id = _notify(world)
    world.ingest(signed_reply(world, world.crash, world.crash_fpr, CRASH, "X-ACK\n\nThanks."))
    world.ingest(signed_reply(world, world.mallory, world.mallory_fpr, MALLORY,
                              "X-STATUS: not-affected\n\nWe do not ship the parser."))
    shown = recipients(world, case_id)
    assert shown[CRASH]["status"] == "acknowledged" and shown[CRASH]["acknowledged_at"]
    assert shown[CRASH]["vendor_status"] is None
    assert shown[MALLORY]["vendor_status"] == "not-affected"
    assert shown[MALLORY]["statement"] == "We do not ship the parser."
    assert shown[MALLORY]["status"] == "acknowledged"
    assert shown[APPLICANT]["status"] == "queued" and shown[APPLICANT]["acknowledged_at"] is None
    assert shown[DADE]["status"] == "held"
    text = world.cli("cases", "show", case_id).stdout
    assert "not-affected: We do not ship the parser." in text


def test_a_statement_never_keeps_a_quoted_copy_token(world: World):
    """The statement is shown and exported (CSAF, public once disclosed): the author's
    quoted copy token is removed from it, so the advisory cannot name the copy."""
    case_id = _notify(world)
    crash_token, _ = copy_of(world, CRASH)
    world.ingest(signed_reply(world, world.crash, world.crash_fpr, CRASH,
                              f"X-STATUS: affected\n\nWe ship 1.4.\n"
                              f"> This copy's token: {crash_token}\n"))
    shown = recipients(world, case_id)[CRASH]
    assert shown["vendor_status"] == "affected" and "We ship 1.4." in shown["statement"]
    assert crash_token not in shown["statement"]
    exported = world.cli("cases", "export", case_id, "--format", "csaf")
    assert exported.returncode == 0, exported.stderr
    assert "We ship 1.4." in exported.stdout and crash_token not in exported.stdout


def test_forged_or_unsigned_status_changes_nothing(world: World):
    case_id = _notify(world)
    body = "X-STATUS: not-affected\n\nNothing to see."
    _, crash_mid = copy_of(world, CRASH)
    world.ingest(reply("Re: notice", body, sender=CRASH, in_reply_to=crash_mid))  # unsigned
    world.ingest(signed_reply(world, world.mallory, world.mallory_fpr, CRASH, body))  # key
    # Mallory's own key, but answering CrashOverride's copy under his From.
    world.ingest(signed_reply(world, world.mallory, world.mallory_fpr, CRASH, body,
                              answering=CRASH))
    shown = recipients(world, case_id)
    assert shown[CRASH]["vendor_status"] is None and shown[CRASH]["acknowledged_at"] is None
    assert shown[MALLORY]["vendor_status"] is None
    refused = [e.detail for e in world_events(world, case_id)
               if e.action == "notice_keyword_refused"]
    assert len(refused) == 3 and all("signed" in d for d in refused)


def test_an_unknown_status_value_tells_the_member_the_allowed_ones(world: World):
    case_id = _notify(world)
    world.deliver()
    seen = len(world.mails_to(CRASH))
    world.ingest(signed_reply(world, world.crash, world.crash_fpr, CRASH,
                              "X-STATUS: maybe\n\nStill looking."))
    world.deliver()
    told = [world.text_of(m, world.crash) for m in fresh(world, CRASH, seen)]
    assert any("affected, not-affected, unknown" in t for t in told)
    assert recipients(world, case_id)[CRASH]["vendor_status"] is None


# --- the reminder --------------------------------------------------------------------------

def test_one_reminder_one_business_day_before_and_none_after_ack(world: World):
    ny = ZoneInfo("America/New_York")
    sent = dt.datetime(2027, 6, 28, 10, 0, tzinfo=ny)
    # Tuesday 6 July 2027; Monday 5 July is the observed Independence Day, so the last
    # business day before is Friday 2 July.
    until = dt.datetime(2027, 7, 6, 15, 0, tzinfo=ny)
    case_id = _notify(world, at=sent, until=until)
    with db.transaction(world.factory) as session:  # Acidburn acknowledged
        copy = session.scalars(select(AnnouncementRecipient).where(
            AnnouncementRecipient.email == APPLICANT)).one()
        copy.acknowledged_at, copy.status = sent, "acknowledged"

    def sweep(at: dt.datetime) -> int:
        with db.transaction(world.factory) as session:
            return notice_reminders.sweep(session, at, world.settings)

    assert sweep(dt.datetime(2027, 7, 1, 23, 59, tzinfo=ny)) == 0
    assert sweep(dt.datetime(2027, 7, 2, 0, 5, tzinfo=ny)) == 2  # Crash and Mallory
    assert sweep(dt.datetime(2027, 7, 2, 9, 0, tzinfo=ny)) == 0  # once
    assert sweep(dt.datetime(2027, 7, 6, 16, 0, tzinfo=ny)) == 0
    with world.factory() as session:
        rows = list(session.scalars(select(Outbox).where(Outbox.kind == "notice_reminder")))
        assert sorted(r.to_addr for r in rows) == sorted([CRASH, MALLORY])
        assert all(r.must_encrypt and r.case_id == case_id for r in rows)
    shown = recipients(world, case_id)
    assert shown[CRASH]["reminded_at"] and shown[APPLICANT]["reminded_at"] is None
    assert shown[DADE]["reminded_at"] is None  # held: it could not read the notice


# --- leaks ---------------------------------------------------------------------------------

def test_a_signed_x_leak_alerts_the_team_and_counts_against_the_leaked_copy(world: World):
    case_id = _notify(world)
    world.deliver()
    seen = len(world.mails_to(ALICE))
    crash_token, _ = copy_of(world, CRASH)
    body = (f"X-LEAK\nX-CASE: {case_id}\n\nThis was pasted on a public forum:\n"
            f"> This copy's token: {crash_token}\n")
    outcome = world.ingest(_signed_by(world.mallory, world.mallory_fpr, MALLORY, body,
                                      subject="leak"))
    assert (outcome.route, outcome.case_id) == ("leak_command", case_id)
    [leak] = leaks(world)
    assert (leak.member_id, leak.signed, leak.reported_by) == (
        member_id(world, CRASH), True, MALLORY)
    world.deliver()
    [alert] = [world.text_of(m, world.alice) for m in fresh(world, ALICE, seen)]
    assert f"seclistd cases disclose {case_id}" in alert and CRASH in alert
    assert "LEAK" in alert


def test_a_stranger_quoting_a_token_is_a_leak_and_repeats_flag_the_member(world: World):
    case_id = _notify(world)
    world.deliver()
    seen = len(world.mails_to(ALICE))
    crash_token, _ = copy_of(world, CRASH)
    quoted = f"Your embargoed notice is on our forum:\nThis copy's token: {crash_token}\n"
    first = world.ingest(reply("FYI", quoted, sender=STRANGER))
    assert (first.route, first.case_id) == ("leak", case_id)
    second = world.ingest(reply("again", quoted + "\nand elsewhere", sender="b@other.example"))
    assert second.route == "leak"
    found = leaks(world)
    assert [x.member_id for x in found] == [member_id(world, CRASH)] * 2
    assert [x.signed for x in found] == [False, False]
    world.deliver()
    alerts = [world.text_of(m, world.alice) for m in fresh(world, ALICE, seen)]
    assert len(alerts) == 2
    assert all(f"seclistd cases disclose {case_id}" in a for a in alerts)
    # Two reports of one leaked copy are one incident: no flag yet (anyone can send two).
    assert not any("members remove" in a for a in alerts)
    shown = json.loads(world.cli("--json", "cases", "show", case_id).stdout)
    assert [x["member"] for x in shown["leaks"]] == [CRASH, CRASH]
    # A leak of another case's copy is a repeat: the member is flagged for removal.
    other = _notify(world, n=2)
    world.deliver()
    seen = len(world.mails_to(ALICE))
    other_token, _ = copy_of(world, CRASH, other)
    world.ingest(reply("more", f"This copy's token: {other_token}\n", sender=STRANGER))
    world.deliver()
    [alert] = [world.text_of(m, world.alice) for m in fresh(world, ALICE, seen)
               if "members remove" in world.text_of(m, world.alice)]
    assert f"seclistd cases disclose {other}" in alert
    with world.factory() as session:
        actions = list(session.scalars(select(MemberEvent.action).where(
            MemberEvent.member_id == member_id(world, CRASH))))
    assert actions.count("leak") == 3 and actions.count("leak_flag") == 1


def test_quoting_a_token_once_the_case_is_public_is_no_leak(world: World):
    """Disclosed, the notice may be quoted anywhere (and its statements are in the public
    CSAF): whoever quotes or answers a copy then leaks nothing, and no member is blamed."""
    case_id = _notify(world)
    crash_token, crash_mid = copy_of(world, CRASH)
    with db.transaction(world.factory) as session:
        case = session.get(Case, case_id)
        assert case is not None
        case.state = "disclosed"
    quoted = f"Seen in the advisory thread:\nThis copy's token: {crash_token}\n"
    assert world.ingest(reply("FYI", quoted, sender=STRANGER)).route != "leak"
    assert world.ingest(reply("Re: notice", "public now", sender="b@other.example",
                              in_reply_to=crash_mid)).route != "leak"
    assert leaks(world) == []


def test_a_mail_naming_an_embargoed_case_is_a_leak_report(world: World):
    case_id = _notify(world)
    outcome = world.ingest(reply("public already",
                                 f"Your embargoed issue {case_id} is on a public forum.",
                                 sender=STRANGER))
    assert (outcome.route, outcome.case_id) == ("leak", case_id)
    [leak] = leaks(world)
    assert leak.member_id is None and leak.reported_by == STRANGER


def test_an_encrypted_signed_review_is_re_sent_and_its_quoted_token_removed(world: World):
    """Members reply encrypted to the project key; the review is read from the decrypted,
    signed content, and the author's quoted copy token never reaches the others."""
    case_id = _notify(world)
    world.deliver()
    before = counts(world)
    crash_token, crash_mid = copy_of(world, CRASH)
    text = f"X-ACK\n\n{REVIEW}\n\n> This copy's token: {crash_token}\n"
    armored = world.crash.encrypt(entity(text), world.project_fpr, sign_fpr=world.crash_fpr)
    raw = threaded(encrypted_mail(CRASH, "Re: Embargoed notice", armored), crash_mid)
    assert world.ingest(raw).route == "notice_reply"
    world.deliver()
    [mail] = fresh(world, MALLORY, before[MALLORY])
    seen = world.text_of(mail, world.mallory)
    assert REVIEW in seen and crash_token not in seen and "[copy token removed]" in seen
    assert recipients(world, case_id)[CRASH]["status"] == "acknowledged"


def test_a_member_naming_the_case_without_threading_is_its_reply_not_a_leak(world: World):
    case_id = _notify(world)
    outcome = world.ingest(reply(f"question on {case_id}", "Is 1.3 affected too?",
                                 sender=MALLORY))
    assert (outcome.route, outcome.case_id) == ("notice_reply", case_id)
    assert leaks(world) == []
