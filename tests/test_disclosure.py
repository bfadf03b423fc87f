"""Disclosure on time (issue 10, item 6), with real gpg homes, real SQLite (and PostgreSQL
for two daemons at once) and the relay delivering to an aiosmtpd sink: the advisory goes to
the public address only at the embargo's end, once, in plaintext and signed by the project
key; the reporter is told and credited; the team and the notified members hear it is
public; the fixing release discloses at once or at the end; `cases disclose` does the same
as the sweep."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import threading
from collections.abc import Iterator
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from sqlalchemy import func, select

from seclistd import config, daemon, db, scheduler
from seclistd.embargo_models import Announcement, AnnouncementRecipient
from seclistd.list_models import Member
from seclistd.models import Case, Outbox
from seclistd.workflows import disclosure, lifecycle, member_states
from tests.components import Sink, cli, report
from tests.test_openpgp import (
    ALICE,
    REPORT_TEXT,
    REPORTER,
    World,
    command,
    make_world,
    signed_by,
)

PUBLIC = "oss-security@lists.example.net"
DISTRO = "security@distro.example"
NOTICE_TEXT = "A crafted config file overflows a heap buffer in the parser of 1.4.2."
LISTS = f"""
[[lists]]
name = "distributors"
address = "distributors@example.org"
criteria = "oci"
public_addresses = ["{PUBLIC}"]
"""
MINUTE = dt.timedelta(minutes=1)


@pytest.fixture
def world(tmp_path: Path, sink: Sink) -> Iterator[World]:
    with make_world(tmp_path, sink) as w:
        yield _with_list(w)


def _with_list(w: World) -> World:
    w.path.write_text(w.path.read_text() + LISTS)
    w.settings = config.load(str(w.path))
    # The distributor's key (Mallory's home stands in for it), imported by the operator.
    w.project.gpg.import_keys(w.mallory.export(w.mallory_fpr))
    return w


def act(world: World, when: dt.datetime, case_id: str, action: str, **kw: object) -> None:
    with db.transaction(world.factory) as session:
        lifecycle.act(session, when, world.settings, case_id,
                      lifecycle.Request(action=action, **kw), ALICE)  # type: ignore[arg-type]


def confirmed_case(world: World) -> str:
    with world.factory() as session:
        n = (session.scalar(select(func.count()).select_from(Case)) or 0) + 1
    case_id = world.ingest(report(n, sender=REPORTER, subject=f"Heap overflow {n}",
                                  body=REPORT_TEXT)).case_id
    act(world, world.now(), case_id, "ack", text="Thanks, we are looking at it.")
    act(world, world.now(), case_id, "confirm", versions="<= 1.4.2",
        cvss="CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H")
    return case_id


def embargoed_case(world: World, hours: float = 2) -> tuple[str, dt.datetime]:
    """A confirmed case under embargo, its notice sent to one distributor."""
    case_id = confirmed_case(world)
    now = world.now()
    until = (now + dt.timedelta(hours=hours)).replace(microsecond=0)
    act(world, now, case_id, "embargo", until=until, text=NOTICE_TEXT)
    with db.transaction(world.factory) as session:
        member = session.scalar(select(Member).where(Member.email == DISTRO))
        if member is None:
            member = member_states.add_member(
                session, list_name="distributors", email=DISTRO, organization="Distro",
                actor="operator", now=now, fingerprint=world.mallory_fpr)
            session.flush()
        # The notice's fan-out (h-notice) may have made these already.
        if session.get(Announcement, case_id) is None:
            session.add(Announcement(case_id=case_id, list_name="distributors", until=until,
                                     text=NOTICE_TEXT, created_at=now, created_by=ALICE))
            session.flush()
        if session.scalar(select(AnnouncementRecipient).where(
                AnnouncementRecipient.case_id == case_id,
                AnnouncementRecipient.member_id == member.id)) is None:
            session.add(AnnouncementRecipient(case_id=case_id, member_id=member.id,
                                              email=DISTRO, role="member",
                                              token=f"t{case_id}", status="sent", sent_at=now))
    world.deliver()
    world.sink.received.clear()
    return case_id, until


def sweep(world: World, when: dt.datetime, factory: object | None = None) -> int:
    return scheduler.run_sweep(factory or world.factory, lambda: when, world.settings,
                               disclosure.sweep)


def deliver(world: World, when: dt.datetime) -> None:
    daemon.drain_relay(world.settings, world.factory, lambda: when)


def advisories(world: World) -> list[bytes]:
    return [r.raw for r in world.sink.to(PUBLIC)]


def verify(world: World, raw: bytes) -> str:
    """The signed text of a multipart/signed mail, after the reporter's gpg (which knows the
    project key) found a good signature by the project key over the bytes as received."""
    head = message_from_bytes(raw, policy=policy.default)
    assert head.get_content_type() == "multipart/signed"
    assert head.get_param("protocol") == "application/pgp-signature"
    boundary = head.get_boundary().encode()
    first = raw.index(b"--" + boundary + b"\r\n") + len(boundary) + 4
    second = raw.index(b"\r\n--" + boundary + b"\r\n", first)
    signed = raw[first:second]
    sig_part = raw[second + len(boundary) + 6:raw.index(b"\r\n--" + boundary + b"--")]
    signature = sig_part[sig_part.index(b"\r\n\r\n") + 4:]
    sig_file = world.tmp / "advisory.asc"
    sig_file.write_bytes(signature)
    done = subprocess.run(["gpg", "--homedir", str(world.reporter.path), "--batch",
                           "--status-fd", "1", "--verify", str(sig_file), "-"],
                          input=signed, capture_output=True)
    status = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()
    assert re.search(r"^\[GNUPG:\] GOODSIG ", status, re.M), status
    valid = re.search(r"^\[GNUPG:\] VALIDSIG (\S+)(?: \S+){8} (\S+)", status, re.M)
    assert valid and world.project_fpr in (valid.group(1), valid.group(2)), status
    entity = message_from_bytes(signed, policy=policy.default)
    assert entity.get_content_type() == "text/plain"
    return entity.get_content()


def text_of(world: World, raw: bytes, home: object) -> str:
    """A mail's text as its recipient reads it (decrypted with ``home`` when encrypted)."""
    msg = message_from_bytes(raw, policy=policy.default)
    if msg.get_content_type() != "multipart/encrypted":
        return msg.get_body(("plain",)).get_content()
    ok, inner = home.decrypt(msg.get_payload()[1].get_payload(decode=True))  # type: ignore[attr-defined]
    assert ok
    return message_from_bytes(inner, policy=policy.default).get_body(("plain",)).get_content()


def kinds(world: World, case_id: str) -> list[tuple[str, str]]:
    with world.factory() as session:
        return sorted((r.kind, r.to_addr) for r in session.scalars(
            select(Outbox).where(Outbox.case_id == case_id, Outbox.kind.in_(
                ("advisory", "now_public", "disclose")))))


# -- on time, once -------------------------------------------------------------------------

def test_nothing_public_before_the_time_and_once_after(world: World, tmp_path: Path):
    case_id, until = embargoed_case(world)

    assert sweep(world, until - MINUTE) == 0
    deliver(world, until - MINUTE)
    assert advisories(world) == []
    assert world.case(case_id).state == "embargoed"

    assert sweep(world, until + MINUTE) == 1
    deliver(world, until + MINUTE)
    [raw] = advisories(world)
    assert b"BEGIN PGP MESSAGE" not in raw  # plaintext
    text = verify(world, raw)
    assert case_id in text and NOTICE_TEXT in text
    assert "<= 1.4.2" in text and "9.8 (CVSS:3.1/" in text and "Rita Reporter" in text
    subject = message_from_bytes(raw, policy=policy.default)["Subject"]
    assert case_id in subject and "advisory" in subject.lower()

    case = world.case(case_id)
    assert case.state == "disclosed" and case.disclosed_at == until + MINUTE
    with world.factory() as session:
        assert session.get(Announcement, case_id).public_at == until + MINUTE

    # Again, a second daemon on its own engine, and a restart: nothing more.
    assert sweep(world, until + 2 * MINUTE) == 0
    engine = db.make_engine(world.settings.database.url)
    try:
        assert sweep(world, until + 3 * MINUTE, db.session_factory(engine)) == 0
    finally:
        engine.dispose()
    deliver(world, until + 3 * MINUTE)
    assert len(advisories(world)) == 1


def test_reporter_team_and_notified_members_are_told(world: World):
    case_id, until = embargoed_case(world)
    sweep(world, until + MINUTE)
    deliver(world, until + MINUTE)

    [to_reporter] = world.sink.to(REPORTER)
    told = text_of(world, to_reporter.raw, world.reporter)
    assert "now public" in told and "Rita Reporter" in told

    [to_team] = world.sink.to(ALICE)
    assert to_team.message.get_content_type() == "multipart/encrypted"  # alice has a key
    team_text = text_of(world, to_team.raw, world.alice)
    assert "public now" in team_text and PUBLIC in team_text

    [to_member] = world.sink.to(DISTRO)
    member_text = text_of(world, to_member.raw, world.mallory)
    assert "public now" in member_text and case_id in member_text
    assert kinds(world, case_id) == sorted([("advisory", PUBLIC), ("disclose", REPORTER),
                                            ("now_public", ALICE), ("now_public", DISTRO)])


def test_two_sweeps_at_once_disclose_once(world: World):
    case_id, until = embargoed_case(world)
    engines = [db.make_engine(world.settings.database.url) for _ in range(2)]
    counts: list[int] = []
    try:
        threads = [threading.Thread(target=lambda e=e: counts.append(
            sweep(world, until + MINUTE, db.session_factory(e)))) for e in engines]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        for e in engines:
            e.dispose()
    assert sorted(counts) == [0, 1]
    deliver(world, until + MINUTE)
    assert len(advisories(world)) == 1


def test_across_a_restart_still_once(world: World):
    case_id, until = embargoed_case(world)
    # The daemon's `run --once` on the machine's clock an hour before: nothing.
    daemon.run_once(world.settings, db.make_engine(world.settings.database.url),
                    lambda: until - dt.timedelta(hours=1))
    assert advisories(world) == []
    for _ in range(2):  # two restarts after the end
        engine = db.make_engine(world.settings.database.url)
        daemon.run_once(world.settings, engine, lambda: until + MINUTE)
        engine.dispose()
    assert len(advisories(world)) == 1
    assert world.case(case_id).state == "disclosed"


def test_a_failing_disclosure_is_recorded_retried_and_the_team_told_once(world: World):
    case_id, until = embargoed_case(world)
    good_key = world.settings.gnupg.key
    broken = world.path.read_text().replace(f'key = "{good_key}"', 'key = "' + "AB" * 20 + '"')
    world.path.write_text(broken)
    world.settings = config.load(str(world.path))
    assert sweep(world, until + MINUTE) == 0
    assert sweep(world, until + 2 * MINUTE) == 0  # within the backoff: not tried again
    case = world.case(case_id)
    assert case.state == "embargoed"
    failed = [e for e in world.events(case_id) if e.action == "disclose_failed"]
    assert len(failed) == 1 and "cannot be signed" in failed[0].detail
    deliver(world, until + 2 * MINUTE)
    assert advisories(world) == []
    with world.factory() as session:  # told once (the notice itself waits for a signing key)
        told = session.scalars(select(Outbox.to_addr).where(
            Outbox.case_id == case_id, Outbox.kind == "disclose_failed")).all()
    assert told == [ALICE]

    world.path.write_text(broken.replace('key = "' + "AB" * 20 + '"', f'key = "{good_key}"'))
    world.settings = config.load(str(world.path))
    assert sweep(world, until + 10 * MINUTE) == 1
    deliver(world, until + 10 * MINUTE)
    assert len(advisories(world)) == 1


# -- the fixing release --------------------------------------------------------------------

def test_released_before_the_end_waits_for_it(world: World):
    case_id, until = embargoed_case(world)
    done = cli(world.path, "cases", "released", case_id, "--version", "1.2.3",
               at=until - dt.timedelta(minutes=30))
    assert done.returncode == 0, done.stderr
    assert "embargoed -> embargoed" in done.stdout
    case = world.case(case_id)
    assert case.state == "embargoed" and case.fixed_version == "1.2.3"
    assert sweep(world, until - MINUTE) == 0
    assert sweep(world, until + MINUTE) == 1
    deliver(world, until + MINUTE)
    [raw] = advisories(world)
    assert "Fixed in:           1.2.3" in verify(world, raw)
    shown = cli(world.path, "cases", "show", case_id, at=until + 2 * MINUTE)
    assert "fixed_version: 1.2.3" in shown.stdout
    assert re.search(r"disclosed_at: \S+", shown.stdout)


def test_released_after_the_end_discloses_at_once(world: World):
    case_id, until = embargoed_case(world)
    done = cli(world.path, "--json", "cases", "released", case_id, "--version", "1.2.3",
               at=until + 5 * MINUTE)
    assert done.returncode == 0, done.stderr
    assert '"to_state": "disclosed"' in done.stdout
    case = world.case(case_id)
    assert case.state == "disclosed" and case.fixed_version == "1.2.3"
    deliver(world, until + 6 * MINUTE)
    assert len(advisories(world)) == 1


def test_released_without_embargo_discloses_at_once(world: World):
    case_id = confirmed_case(world)
    done = world.cli("cases", "released", case_id, "--version", "2.0.1")
    assert done.returncode == 0, done.stderr
    assert "confirmed -> disclosed" in done.stdout
    world.deliver()
    [raw] = advisories(world)
    assert "2.0.1" in verify(world, raw)
    missing = world.cli("cases", "released", case_id, "--version", "3")
    assert missing.returncode == 1 and "disclosed" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_signed_x_released(world: World):
    case_id = confirmed_case(world)
    world.ingest(signed_by(world, world.alice, world.alice_fpr,
                           command(case_id, "X-RELEASED: 1.4.3", text="")))
    case = world.case(case_id)
    assert case.state == "disclosed" and case.fixed_version == "1.4.3"
    world.deliver()
    assert "1.4.3" in verify(world, advisories(world)[0])


# -- by hand -------------------------------------------------------------------------------

def test_manual_disclose_does_what_the_sweep_does(world: World):
    by_sweep, until = embargoed_case(world)
    sweep(world, until + MINUTE)
    by_hand, _ = embargoed_case(world)
    done = world.cli("cases", "disclose", by_hand, "--message", "Thank you!")
    assert done.returncode == 0, done.stderr
    assert [k for k, _ in kinds(world, by_hand)] == [k for k, _ in kinds(world, by_sweep)]
    assert kinds(world, by_hand) == kinds(world, by_sweep)
    deliver(world, until + 2 * MINUTE)
    hand = [raw for raw in advisories(world) if by_hand.encode() in raw]
    assert len(hand) == 1 and by_hand in verify(world, hand[0])
    assert world.case(by_hand).disclosed_at is not None


def test_two_daemons_on_postgresql_disclose_once(tmp_path: Path, pg_url: str, sink: Sink):
    with make_world(tmp_path, sink, db_url=pg_url) as w:
        world = _with_list(w)
        case_id, until = embargoed_case(world)
        engines = [db.make_engine(pg_url) for _ in range(4)]
        counts: list[int] = []
        barrier = threading.Barrier(len(engines))

        def run(engine: object) -> None:
            barrier.wait(timeout=30)
            counts.append(sweep(world, until + MINUTE, db.session_factory(engine)))

        threads = [threading.Thread(target=run, args=(e,)) for e in engines]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=60)
        finally:
            for e in engines:
                e.dispose()
        assert sorted(counts) == [0, 0, 0, 1]
        deliver(world, until + MINUTE)
        assert len(advisories(world)) == 1
        assert world.case(case_id).state == "disclosed"
