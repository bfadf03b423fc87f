"""Built-in SMTP/LMTP listener (aiosmtpd): answers 250 only after the commit.

The handler prepends a ``Return-Path`` from the envelope sender, as a delivery agent does,
and hands the bytes to ``store.accept`` in a worker thread. Only our own addresses are
accepted as recipients. Any failure answers 451 so the client keeps the message and
retries; oversized messages are refused by aiosmtpd with 552 before they are read.
LMTP answers one line per recipient.

Recipients: our own addresses, and the security address with any ``+detail``
(``security+bounce-TOKEN@…`` is a list member's own return path, ``mail.verp``), as
Postfix's ``recipient_delimiter = +`` would deliver them. The envelope recipients go to
``accept`` and decide whether a message is a member's bounce (``classify.bounce_token``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.lmtp import LMTP
from sqlalchemy.orm import Session, sessionmaker

from seclistd.config import Settings
from seclistd.errors import trace
from seclistd.intake.store import accept
from seclistd.mail.compose import clean
from seclistd.workflows.report import own_addresses

log = logging.getLogger(__name__)


class Handler:
    """``current``, when given, is read for each message (the daemon's live settings, swapped
    on SIGHUP); otherwise ``settings`` stays. Once ``closing`` is set (SIGTERM), a new
    transaction is answered 421 and the caller waits for ``busy`` ones to end."""

    def __init__(self, settings: Settings, factory: sessionmaker[Session],
                 clock: Callable[[], dt.datetime], on_commit: Callable[[], None] = lambda: None,
                 current: Callable[[], Settings] | None = None):
        self._settings = settings
        self._current = current
        self.factory = factory
        self.clock = clock
        self.on_commit = on_commit
        self.closing = False
        self.sessions: set[Any] = set()  # SMTP protocol objects that have started a MAIL

    @property
    def settings(self) -> Settings:
        return self._current() if self._current is not None else self._settings

    def accepts(self, address: str) -> bool:
        """One of our own addresses, or the security address with a ``+detail``."""
        settings = self.settings
        address = address.lower()
        if address in own_addresses(settings):
            return True
        local, _, domain = address.rpartition("@")
        own_local, _, own_domain = settings.project.security_address.lower().rpartition("@")
        return domain == own_domain and local.startswith(f"{own_local}+")

    def busy(self) -> int:
        """Transactions under way: a MAIL given, its DATA not yet answered, still connected
        (read on the listener's event loop)."""
        def open_transaction(server: Any) -> bool:
            transport = getattr(server, "transport", None)
            envelope = getattr(server, "envelope", None)
            return (transport is not None and not transport.is_closing()
                    and envelope is not None and envelope.mail_from is not None)
        self.sessions = {s for s in self.sessions if open_transaction(s)}
        return len(self.sessions)

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str,
                          mail_options: list[str]) -> str:
        if self.closing:
            return "421 4.3.2 shutting down, please try again later"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        self.sessions.add(server)
        return "250 OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        if not self.accepts(address):
            return "550 5.1.1 no such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content = envelope.original_content or envelope.content
        raw = content if isinstance(content, bytes) else content.encode("utf-8", "surrogateescape")
        mail_from = clean(envelope.mail_from or "", 320).strip("<>")
        raw = f"Return-Path: <{mail_from}>\r\n".encode() + raw
        protocol = self.settings.listener.protocol
        try:
            outcome = await asyncio.get_running_loop().run_in_executor(
                None, lambda: accept(self.factory, self.settings, raw, source=protocol,
                                     now=self.clock(), envelope_from=mail_from,
                                     envelope_to=list(envelope.rcpt_tos)))
        except Exception as exc:  # noqa: BLE001 - the client keeps the message and retries
            log.error("listener could not store a message:\n%s", trace(exc))
            return self._answer(envelope, "451 4.3.0 temporary failure, please try again later")
        self.on_commit()
        return self._answer(envelope, f"250 2.0.0 stored as message {outcome.id}")

    def _answer(self, envelope: Any, line: str) -> str:
        if self.settings.listener.protocol == "lmtp":
            return "\r\n".join(line for _ in envelope.rcpt_tos)
        return line


class LMTPController(Controller):
    def factory(self) -> LMTP:
        return LMTP(self.handler, **self.SMTP_kwargs)


def make_controller(settings: Settings, handler: Handler) -> Controller:
    lst = settings.listener
    cls = LMTPController if lst.protocol == "lmtp" else Controller
    return cls(handler, hostname=lst.host, port=lst.port,
               data_size_limit=settings.limits.max_message_bytes, enable_SMTPUTF8=True)
