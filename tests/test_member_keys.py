"""The daily key check with real gpg homes: a key expiring in 10 days warns the member and
the team once, an expired or revoked key suspends, an extended key resumes; the sweep runs
with ``now`` past the expiry (and ``run --once`` under faketime) instead of waiting.

gpg stamps keys with the machine's clock, so this test's times start from it (``START``)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from seclistd import config, db
from seclistd.crypto import keyring_for
from seclistd.db import transaction
from seclistd.list_models import Member
from seclistd.models import Outbox
from seclistd.scheduler import run_sweep
from seclistd.workflows import member_keys, member_states
from tests.components import Sink, cli, write_config
from tests.pgp import Home, new_home

MEMBER = "security@distro.example.net"
DAY = dt.timedelta(days=1)


@dataclass
class World:
    path: Path
    settings: config.Settings
    factory: object
    project: Home
    member_home: Home
    fpr: str
    start: dt.datetime

    def sweep(self, at: dt.datetime) -> int:
        return run_sweep(self.factory, lambda: at, self.settings, member_keys.sweep)

    def member(self) -> Member:
        with self.factory() as session:
            found = session.scalars(select(Member)).one()
            session.expunge(found)
            return found

    def actions(self) -> list[str]:
        with self.factory() as session:
            return [e.action for e in session.scalars(select(Member)).one().events]

    def outbox(self, kind: str) -> list[Outbox]:
        with self.factory() as session:
            rows = list(session.scalars(select(Outbox).where(Outbox.kind == kind)
                                        .order_by(Outbox.id)))
            session.expunge_all()
            return rows

    def refresh_key(self) -> None:
        """The member's key as the operator (or the member's mail) brought it in again."""
        keyring_for(self.settings.gnupg).import_keys(self.member_home.export(self.fpr))


@pytest.fixture
def world(tmp_path: Path, sink: Sink) -> Iterator[World]:
    project, member_home = new_home(), new_home()
    try:
        project_fpr = project.generate("Example security team", "security@example.org")
        fpr = member_home.generate("Distro security", MEMBER, expire="10d")
        path = write_config(tmp_path, relay_port=sink.port, gnupg_home=project.path,
                            gnupg_key=project_fpr)
        settings = config.load(str(path))
        db.migrate(settings.database.url)
        engine = db.make_engine(settings.database.url)
        factory = db.session_factory(engine)
        start = dt.datetime.now(dt.UTC)
        w = World(path, settings, factory, project, member_home, fpr, start)
        w.refresh_key()
        with transaction(factory) as session:
            member_states.add_member(session, list_name="distributors", email=MEMBER,
                                     organization="Distro", actor="test", now=start,
                                     fingerprint=fpr)
        yield w
        engine.dispose()
    finally:
        project.close()
        member_home.close()


def test_a_key_expiring_in_ten_days_warns_member_and_team_once(world: World):
    world.sweep(world.start)
    rows = world.outbox("member_key_expiring")
    assert sorted(r.to_addr for r in rows) == ["alice@example.org", MEMBER]
    note = next(r for r in rows if r.to_addr == MEMBER)
    assert world.fpr.encode() in note.raw and b"expires on" in note.raw
    m = world.member()
    assert m.key_warned_at == world.start and m.state == "active"
    assert m.key_expires is not None and 9 * DAY < m.key_expires - world.start <= 10 * DAY
    world.sweep(world.start + DAY)
    world.sweep(world.start + 5 * DAY)
    assert len(world.outbox("member_key_expiring")) == 2  # once, not daily
    assert world.actions() == ["add", "key_expiry_warning"]


def test_no_warning_far_from_expiry(world: World, tmp_path: Path):
    settings = config.load(str(write_config(
        tmp_path, gnupg_home=world.project.path, extra="[membership]\n"
        "key_expiry_warning_days = 5\n")))
    run_sweep(world.factory, lambda: world.start, settings, member_keys.sweep)
    assert world.outbox("member_key_expiring") == []
    run_sweep(world.factory, lambda: world.start + 6 * DAY, settings, member_keys.sweep)
    assert len(world.outbox("member_key_expiring")) == 2


def test_an_expired_key_suspends_and_an_extended_one_resumes(world: World):
    world.sweep(world.start)
    after = world.start + 11 * DAY
    world.sweep(after)
    m = world.member()
    assert m.state == "suspended"
    assert m.state_reason.startswith(f"the member's key {world.fpr} expired on ")
    rows = world.outbox("member_suspended")
    assert sorted(r.to_addr for r in rows) == ["alice@example.org", MEMBER]
    note = next(r for r in rows if r.to_addr == MEMBER)
    # The key is the problem: the note may go in plaintext (the relay falls back when the key
    # cannot be used), and says nothing of any case.
    assert note.must_encrypt is False
    world.sweep(after + DAY)
    assert len(world.outbox("member_suspended")) == 2  # suspended once
    # The member extends its key and sends it again: the next check resumes it, and warns
    # again since the new expiry date is close as well.
    world.member_home.run("--quick-set-expire", world.fpr, "20d")
    world.member_home.run("--quick-set-expire", world.fpr, "20d", "*")
    world.refresh_key()
    world.sweep(after + DAY)
    m = world.member()
    assert m.state == "active" and m.key_expires > after + 8 * DAY
    assert world.actions()[-5:] == ["key_notice", "key_expiry_changed", "resume",
                                    "key_notice", "key_expiry_warning"]
    assert sorted(r.to_addr for r in world.outbox("member_resumed")) == [
        "alice@example.org", MEMBER]
    assert len(world.outbox("member_key_expiring")) == 4


def test_a_revoked_key_suspends_and_a_team_suspension_is_left_alone(world: World):
    keyring_for(world.settings.gnupg).import_keys(world.member_home.revocation(world.fpr))
    world.sweep(world.start)
    m = world.member()
    assert (m.state, m.state_reason) == ("suspended", f"the member's key {world.fpr} is revoked")
    assert "revoked" in world.outbox("member_suspended")[0].subject
    # Suspended by the team for another reason: the key check never resumes it.
    with transaction(world.factory) as session:
        found = session.scalars(select(Member)).one()
        found.state_reason = "leaked an embargo"
    world.sweep(world.start + DAY)
    assert world.member().state == "suspended"


def test_run_once_under_faketime_suspends_an_expired_key(world: World):
    done = cli(world.path, "run", "--once", at=world.start + 11 * DAY)
    assert done.returncode == 0, done.stderr
    m = world.member()
    assert m.state == "suspended" and "expired on" in m.state_reason
