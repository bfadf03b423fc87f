"""Case states and transitions as data (DESIGN.md §3), and the audit-event helper.

``RULES`` maps (state, action) to the rule that applies: the state the case moves to (None:
it stays), the resolution a closing action sets, and whether the action's text goes to the
reporter. Any (state, action) pair not in the table is illegal; ``allowed`` lists what a
state permits, for the one-line answer to an operator or a signed command.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy.orm import Session

from seclistd.models import Case, Event

NEW = "new"
ACKNOWLEDGED = "acknowledged"
CONFIRMED = "confirmed"
EMBARGOED = "embargoed"
DISCLOSED = "disclosed"
CLOSED = "closed"
STATES = (NEW, ACKNOWLEDGED, CONFIRMED, EMBARGOED, DISCLOSED, CLOSED)
OPEN_STATES = (NEW, ACKNOWLEDGED, CONFIRMED, EMBARGOED)

ACTIONS = ("ack", "assign", "confirm", "reject", "duplicate", "reply", "comment", "embargo",
           "disclose", "released", "close")
# The actions whose text is mailed to the reporter (DESIGN.md §4: X-ACK, X-REPLY, X-REJECT,
# X-DISCLOSE); every other action's text is an internal comment.
TO_REPORTER = frozenset({"ack", "reply", "reject", "disclose"})


@dataclass(frozen=True)
class Rule:
    to_state: str | None  # None: the case stays where it is
    resolution: str | None = None


def _table() -> dict[tuple[str, str], Rule]:
    rules = {
        (NEW, "ack"): Rule(ACKNOWLEDGED),
        (NEW, "reply"): Rule(ACKNOWLEDGED),  # a human answer is an acknowledgment
        (NEW, "reject"): Rule(CLOSED, "rejected"),
        (NEW, "duplicate"): Rule(CLOSED, "duplicate"),
        (ACKNOWLEDGED, "confirm"): Rule(CONFIRMED),
        (ACKNOWLEDGED, "reject"): Rule(CLOSED, "rejected"),
        (ACKNOWLEDGED, "duplicate"): Rule(CLOSED, "duplicate"),
        (CONFIRMED, "embargo"): Rule(EMBARGOED),
        (CONFIRMED, "disclose"): Rule(DISCLOSED),
        (CONFIRMED, "reject"): Rule(CLOSED, "rejected"),
        (EMBARGOED, "embargo"): Rule(EMBARGOED),  # reschedule
        (EMBARGOED, "disclose"): Rule(DISCLOSED),
        # The fixing release is recorded where the case is; the disclosure it causes (at
        # once, or at the embargo's end: workflows.disclosure) is a `disclose` of its own.
        (CONFIRMED, "released"): Rule(None),
        (EMBARGOED, "released"): Rule(None),
        (DISCLOSED, "close"): Rule(CLOSED, "fixed"),
    }
    for state in OPEN_STATES + (DISCLOSED,):
        rules.setdefault((state, "assign"), Rule(None))
        rules.setdefault((state, "reply"), Rule(None))
        rules.setdefault((state, "comment"), Rule(None))
    for state in OPEN_STATES:
        # The reporter withdrew the report, or the team drops it: `close --resolution withdrawn`.
        rules.setdefault((state, "close"), Rule(CLOSED, "withdrawn"))
    rules[(CLOSED, "comment")] = Rule(None)
    return rules


RULES: dict[tuple[str, str], Rule] = _table()


def allowed(state: str) -> list[str]:
    return [action for action in ACTIONS if (state, action) in RULES]


def record(session: Session, now: dt.datetime, case: Case, *, actor: str, action: str,
           detail: str = "", to_state: str | None = None) -> Event:
    """Write an audit event; with ``to_state``, move the case there in the same transaction."""
    from_state = case.state
    if to_state is not None:
        case.state = to_state
    event = Event(case_id=case.id, at=now, actor=actor, action=action, from_state=from_state,
                  to_state=case.state, detail=detail)
    session.add(event)
    return event
