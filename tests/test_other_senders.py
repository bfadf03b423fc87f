"""Mail on a case from someone other than the reporter is never filed silently (found by the
attack review): a stranger's reaches the handler marked as unverified, a team member's
unsigned one is kept and its sender told how to send it; both capped per case and day."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from seclistd.workflows import report
from tests.components import Sink
from tests.pgp import entity, headers
from tests.test_openpgp import ALICE, REPORTER, World, make_world

STRANGER = "other@example.com"


@pytest.fixture
def world(tmp_path: Path, sink: Sink) -> Iterator[World]:
    with make_world(tmp_path, sink) as w:
        yield w


def mail_on(case_id: str, sender: str, text: str) -> bytes:
    return headers(sender, f"Re: [{case_id}] heap overflow").encode() + entity(text)


def to_alice(world: World, marker: str) -> list[str]:
    """The plaintext of each mail Alice got (encrypted to her key) that contains ``marker``."""
    found = []
    for received in world.sink.to(ALICE):
        ok, plain = world.alice.decrypt(received.raw)
        assert ok
        text = plain.decode("utf-8", "replace")
        if marker in text:
            found.append(text)
    return found


def test_a_strangers_mail_reaches_the_handler_marked_and_never_the_reporter(world: World):
    case_id = world.open_case()
    world.deliver()
    before = len(world.sink.to(REPORTER))
    world.ingest(mail_on(case_id, STRANGER, "I found a second, worse bug: RCE in the parser."))
    world.deliver()

    [text] = to_alice(world, "Not from the reporter")
    assert "other@example.com, not the reporter on record" in text and "RCE" in text
    assert len(world.sink.to(REPORTER)) == before and not world.sink.to(STRANGER)
    [event] = [e for e in world.events(case_id) if e.actor == STRANGER]
    assert "not from the reporter on record" in event.detail


def test_the_forwards_are_capped_per_case_and_day(world: World):
    case_id = world.open_case()
    for n in range(report.OTHER_FORWARDS_PER_DAY + 2):
        world.ingest(mail_on(case_id, STRANGER, f"Spam number {n}."))
    world.deliver()
    assert len(to_alice(world, "Not from the reporter")) == report.OTHER_FORWARDS_PER_DAY
    details = [e.detail for e in world.events(case_id) if e.actor == STRANGER]
    assert len(details) == report.OTHER_FORWARDS_PER_DAY + 2
    assert sum("not passed on" in d for d in details) == 2


def test_a_team_members_unsigned_mail_is_kept_and_the_member_told(world: World):
    case_id = world.open_case()
    world.deliver()
    before = len(world.sink.to(REPORTER))
    world.ingest(mail_on(case_id, ALICE, "Thanks, we are looking into it."))
    world.deliver()
    [note] = to_alice(world, "Kept on the case")
    assert "X-REPLY" in note
    assert len(world.sink.to(REPORTER)) == before
