"""The pipeline for one stored message: limits, parse, classify, and hand to a workflow.

``process`` runs in the transaction that stored the message, so the message row, the case
it opens or joins, the audit events and the outgoing mail commit together. A message that
cannot be processed is marked quarantined with its reason, in that same transaction.
"""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy.orm import Session

from seclistd.config import Settings
from seclistd.mail import compose
from seclistd.mail.classify import Context, classify
from seclistd.mail.parse import Unprocessable, check_limits, parse
from seclistd.models import Case, Message
from seclistd.workflows import report

log = logging.getLogger(__name__)


def quarantine(message: Message, reason: str, label: str | None = None) -> None:
    message.status = "quarantined"
    message.quarantine_reason = reason[:2000]
    message.route = label or "quarantine"


def process(session: Session, now: dt.datetime, settings: Settings, message: Message, *,
            enforce_limits: bool = True) -> None:
    raw = message.raw
    try:
        if enforce_limits:
            check_limits(raw, settings.limits)
        mail = parse(raw)
    except Unprocessable as exc:
        quarantine(message, str(exc))
        return
    message.from_addr = mail.from_addr
    message.to_addrs = ", ".join(mail.to_addrs)[:5000]
    message.subject = compose.clean(mail.subject, 998)
    message.text = mail.text
    route = classify(Context(session=session, mail=mail, raw=raw,
                             own_addresses=report.own_addresses(settings),
                             case_prefix=settings.project.case_prefix,
                             max_received=settings.limits.max_received))
    message.route = route.label
    if route.kind == "quarantine":
        quarantine(message, route.reason or route.label, route.label)
        return
    message.status = "processed"
    if route.kind == "reply":
        case = session.get(Case, route.case_id)
        assert case is not None
        report.attach_reply(session, now, settings, case, message, mail, route.label)
    else:
        report.open_case(session, now, settings, message, mail)
