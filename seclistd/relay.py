"""The relay: claims due outbox rows and sends them by SMTP or into a maildir.

Rows are claimed with a lease (``SELECT … FOR UPDATE SKIP LOCKED`` on PostgreSQL, the
``BEGIN IMMEDIATE`` write lock on SQLite), sent one by one outside any transaction, and each
is marked sent in its own short transaction right after the server accepted it. A crash
can therefore cause at most the one in-flight mail to go out twice, never a loss. Leases of
a dead process on this host are released at start and by the scheduler's ``leases`` sweep;
others expire after ``relay.lease_seconds``.

Mail to be encrypted is sealed (encrypted to its one recipient's key and signed by the
project key) by a small pool of threads, one per core, each waiting on its own gpg process,
while the batch is sent in claim order over one SMTP connection, each row as soon as its
copy is ready: a notice to a hundred members costs about half the gpg time of a plain loop.

Temporary failures are retried with Postfix's backoff (300 s doubling to 4000 s) until
``relay.max_age_days``; permanent (5xx) failures and give-ups are marked ``failed`` and
logged, never dropped. A row that fails in an unexpected way is retried like a temporary
failure and never stops the rows behind it. A mail with an internationalised address or
UTF-8 header goes out with SMTPUTF8 (RFC 6531); a next hop that does not offer it fails the
row at once with that reason (``outbox list``), to be retried by hand once the relay can.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import mailbox
import os
import secrets
import smtplib
import socket
import ssl
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from sqlalchemy import case, select, update
from sqlalchemy.orm import Session, sessionmaker

from seclistd import failures
from seclistd.config import RelaySettings, Settings
from seclistd.db import transaction
from seclistd.list_models import Member
from seclistd.mail.addresses import is_international
from seclistd.mail.parse import header_end
from seclistd.models import Case, Outbox

if TYPE_CHECKING:
    from seclistd.crypto import KeyInfo

log = logging.getLogger(__name__)

class TemporaryFailure(Exception):
    pass


class PermanentFailure(Exception):
    pass


class Hold(Exception):
    """The mail may not go out as it is (no key to encrypt to); the text says why."""


# (raw, fingerprint to encrypt to, must it be encrypted) -> (bytes to send, encrypted?)
# A sealer may also offer ``for_batch(fingerprints) -> Sealer``: the relay calls it once per
# claimed batch, so that the keys of the whole batch are looked up in one gpg call.
Sealer = Callable[[bytes, "str | None", bool], tuple[bytes, bool]]


def plain_only(raw: bytes, encrypt_to: str | None, must_encrypt: bool) -> tuple[bytes, bool]:
    """The sealer when no GnuPG home is set up: anything that must be encrypted is held."""
    if must_encrypt:
        raise Hold("this mail must go out encrypted and no GnuPG keyring is available")
    return raw, False


class KeyringSealer:
    """Encrypts (and signs with the project key) each mail for its one recipient, or holds it.

    Safe to call from several threads at once: each call runs one gpg process of its own
    (``--no-random-seed-file``, so parallel runs do not wait on the home's seed file lock)
    and writes nothing to the keyring."""

    def __init__(self, settings: Settings, known: dict[str, KeyInfo] | None = None):
        self.settings = settings
        self.known = known  # keys looked up for the current batch (see ``for_batch``)

    def for_batch(self, fingerprints: list[str]) -> KeyringSealer:
        """A sealer for one batch that knows its keys (one gpg call for all of them). A key
        it did not find is looked up again when its row is sealed, so a failed lookup
        costs time, never a row."""
        from seclistd.crypto import keyring

        ring = keyring(self.settings.gnupg)
        if ring is None or not fingerprints:
            return self
        try:
            known = ring.keys(fingerprints)
        except Exception as exc:  # noqa: BLE001 - the rows' own lookups decide
            log.warning("could not look up the keys of a batch at once: %s", exc)
            return self
        return KeyringSealer(self.settings, known)

    def __call__(self, raw: bytes, encrypt_to: str | None,
                 must_encrypt: bool) -> tuple[bytes, bool]:
        from seclistd.crypto import CryptoError, keyring
        from seclistd.mail.pgpmime import encrypt_message

        settings = self.settings
        if not encrypt_to:
            if must_encrypt:
                raise Hold("the recipient may only get encrypted mail and no key of theirs "
                           "is known: `seclistd keys import FILE`, then "
                           "`seclistd outbox retry ID`")
            return raw, False
        ring = keyring(settings.gnupg)
        if ring is None:
            raise Hold("gpg is not installed, so this mail cannot be encrypted")
        known = self.known if self.known and encrypt_to.upper() in self.known else None
        try:
            sealed = encrypt_message(
                raw, lambda inner: ring.encrypt(inner, encrypt_to,
                                                sign=settings.gnupg.key or None, known=known),
                boundary=f"seclistd-{secrets.token_hex(12)}")
        except CryptoError as exc:
            if not must_encrypt:  # a content-free note to a key that can no longer be used
                log.warning("cannot encrypt to %s (%s); the mail carries nothing "
                            "confidential and goes in plaintext", encrypt_to, exc)
                return raw, False
            raise Hold(f"cannot encrypt to {encrypt_to}: {exc}") from exc
        return sealed, True


def sealer(settings: Settings) -> KeyringSealer:
    """Encrypt (and sign with the project key) each mail for its one recipient, or hold it."""
    return KeyringSealer(settings)


NO_SMTPUTF8 = ("the next hop does not offer SMTPUTF8, which this mail needs for its "
               "internationalised address or header (RFC 6531)")


def needs_smtputf8(envelope_from: str, to: str, raw: bytes) -> bool:
    """Whether the envelope or the header block holds UTF-8 (our bodies are 7-bit)."""
    return (is_international(envelope_from) or is_international(to)
            or not raw[:header_end(raw)].isascii())


class Transport(Protocol):
    def send(self, envelope_from: str, to: str, raw: bytes) -> None: ...

    def close(self) -> None: ...


class SmtpTransport:
    """One SMTP connection reused across a batch; reconnects after any error."""

    def __init__(self, settings: RelaySettings, context: ssl.SSLContext | None = None):
        self.settings = settings
        self.context = context or ssl.create_default_context()
        self.conn: smtplib.SMTP | None = None

    def connect(self) -> smtplib.SMTP:
        """A logged-in connection (STARTTLS or implicit TLS, and AUTH, as configured)."""
        s = self.settings
        conn: smtplib.SMTP
        if s.security == "tls":
            conn = smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout, context=self.context)
        else:
            conn = smtplib.SMTP(s.host, s.port, timeout=s.timeout)
        conn.ehlo()
        if s.security == "starttls":
            conn.starttls(context=self.context)
            conn.ehlo()
        if s.username:
            conn.login(s.username, s.password)
        return conn

    def send(self, envelope_from: str, to: str, raw: bytes) -> None:
        try:
            if self.conn is None:
                self.conn = self.connect()
            options: list[str] = []
            if needs_smtputf8(envelope_from, to, raw):
                if not self.conn.has_extn("smtputf8"):
                    raise PermanentFailure(NO_SMTPUTF8)
                options = ["SMTPUTF8"] + (["BODY=8BITMIME"] if self.conn.has_extn("8bitmime")
                                          else [])
            self.conn.sendmail(envelope_from, [to], raw, mail_options=options)
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = next(iter(exc.recipients.values()))
            self._classify(code, text)
        except smtplib.SMTPResponseException as exc:
            self._reset()
            self._classify(exc.smtp_code, exc.smtp_error)
        except (smtplib.SMTPException, OSError) as exc:
            self._reset()
            raise TemporaryFailure(f"{type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _classify(code: int, text: bytes | str) -> None:
        message = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
        if 500 <= code < 600:
            raise PermanentFailure(f"{code} {message}")
        raise TemporaryFailure(f"{code} {message}")

    def _reset(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.close()

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                self.conn.quit()
        self._reset()


class MaildirTransport:
    """Writes each mail into a maildir (the development default), as an MDA would; UTF-8
    addresses and headers are written as they are (an MDA for SMTPUTF8 mail does the same)."""

    def __init__(self, path: str):
        # mailbox.Maildir(create=True) makes new/cur/tmp only when it makes the directory
        # itself: an existing empty directory must get them too.
        for sub in ("tmp", "new", "cur"):
            Path(path, sub).mkdir(parents=True, exist_ok=True)
        self.box = mailbox.Maildir(path, create=False)

    def send(self, envelope_from: str, to: str, raw: bytes) -> None:
        head = f"Return-Path: <{envelope_from}>\nDelivered-To: {to}\n".encode()
        try:
            self.box.add(head + raw.replace(b"\r\n", b"\n"))
        except OSError as exc:
            raise TemporaryFailure(f"cannot write to maildir: {exc}") from exc

    def close(self) -> None:
        pass


def make_transport(settings: RelaySettings) -> Transport:
    if settings.transport == "maildir":
        return MaildirTransport(settings.maildir)
    return SmtpTransport(settings)


def lease_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def release_dead_leases(session: Session) -> int:
    """Free rows leased by processes on this host that no longer run."""
    host = socket.gethostname()
    rows = session.scalars(select(Outbox).where(
        Outbox.status == "pending", Outbox.lease_owner.like(f"{host}:%"))).all()
    freed = 0
    for row in rows:
        pid = row.lease_owner.rpartition(":")[2] if row.lease_owner else ""
        if pid.isdigit() and not _pid_alive(int(pid)):
            row.lease_owner, row.lease_until = None, None
            freed += 1
    return freed


def claim(session: Session, now: dt.datetime, owner: str, limit: int,
          lease_seconds: int) -> list[Outbox]:
    rows = session.scalars(
        select(Outbox)
        .where(Outbox.status == "pending", Outbox.next_attempt_at <= now,
               (Outbox.lease_until.is_(None)) | (Outbox.lease_until < now))
        .order_by(Outbox.next_attempt_at, Outbox.id)
        .limit(limit)
        .with_for_update(skip_locked=True)).all()
    for row in rows:
        row.lease_owner = owner
        row.lease_until = now + dt.timedelta(seconds=lease_seconds)
    return list(rows)


def backoff(attempts: int) -> int:
    """Seconds before the next try after ``attempts`` failed tries (Postfix's defaults)."""
    return failures.backoff(attempts)


# Mail that carries a one-time token or code in its text: once sent, its stored copy is
# replaced, so that the token lives only in the recipient's mailbox (the database keeps its
# SHA-256), not in the outbox, a backup or `outbox list`.
SECRET_KINDS = ("request_token", "member_key_token", "confirm_change")
SCRUBBED = b"(removed once sent: this mail carried a one-time token)\r\n"


def _finish(factory: sessionmaker[Session], row_id: int, owner: str, **values: object) -> None:
    """Record the outcome of one send in its own short transaction (Core: this is per mail)."""
    t = Outbox.__table__
    if isinstance(values.get("last_error"), str):
        values["last_error"] = failures.clean_text(str(values["last_error"]))
    if values.get("status") == "sent":
        values["raw"] = case((t.c.kind.in_(SECRET_KINDS), SCRUBBED), else_=t.c.raw)
    with transaction(factory) as session:
        session.connection().execute(
            update(t).where(t.c.id == row_id, t.c.lease_owner == owner)
            .values(lease_owner=None, lease_until=None, **values))


Row = tuple[int, str, str, bytes, int, dt.datetime, "str | None", bool]


def seal_workers() -> int:
    """How many rows are sealed at once: one per core (the work is in gpg's processes)."""
    return os.cpu_count() or 1


def drain(factory: sessionmaker[Session], settings: RelaySettings, transport: Transport,
          clock: Callable[[], dt.datetime], owner: str, *, batch: int = 50,
          should_stop: Callable[[], bool] = lambda: False, seal: Sealer = plain_only,
          workers: int | None = None) -> int:
    """Send every due row; returns how many were sent.

    The rows of a claimed batch that are to be encrypted are sealed in parallel by
    ``workers`` threads (default ``seal_workers()``), each waiting on one gpg process, while
    this thread sends the batch in claim order over the one transport, each row as soon as
    its sealed copy is ready, and records each row's outcome in its own transaction right
    after the server answered. Sealing ahead sends nothing: what a crash interrupts is at
    most the one row in flight, as before.
    """
    sent = 0
    pool = ThreadPoolExecutor(max_workers=max(1, workers or seal_workers()),
                              thread_name_prefix="seal")
    try:
        while not should_stop():
            now = clock()
            with transaction(factory) as session:
                rows: list[Row] = [
                    (r.id, r.envelope_from, r.to_addr, r.raw, r.attempts, r.created_at,
                     r.encrypt_to, r.must_encrypt)
                    for r in claim(session, now, owner, batch, settings.lease_seconds)]
            if not rows:
                break
            for_batch = getattr(seal, "for_batch", None)
            batch_seal: Sealer = (for_batch(sorted({r[6] for r in rows if r[6]}))
                                  if for_batch is not None else seal)
            sealing = [_start_seal(pool, batch_seal, row) for row in rows]
            for row, future in zip(rows, sealing, strict=True):
                if should_stop():
                    future.cancel()
                    _finish(factory, row[0], owner)  # give the lease back
                    continue
                sent += _send_one(factory, settings, transport, clock, owner, future.result,
                                  *row)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return sent


def _start_seal(pool: ThreadPoolExecutor, seal: Sealer, row: Row) -> Future[tuple[bytes, bool]]:
    """The row's sealed copy, to come: in the pool when there is something to encrypt,
    at once when there is not (plaintext, or a hold)."""
    raw, encrypt_to, must = row[3], row[6], row[7]
    if encrypt_to:
        return pool.submit(seal, raw, encrypt_to, must)
    done: Future[tuple[bytes, bool]] = Future()
    try:
        done.set_result(seal(raw, encrypt_to, must))
    except Exception as exc:  # noqa: BLE001 - raised again where the row's outcome is recorded
        done.set_exception(exc)
    return done


def _send_one(factory: sessionmaker[Session], settings: RelaySettings, transport: Transport,
              clock: Callable[[], dt.datetime], owner: str,
              sealed: Callable[[], tuple[bytes, bool]], row_id: int,
              env_from: str, to: str, raw: bytes, attempts: int, created: dt.datetime,
              encrypt_to: str | None, must: bool) -> int:
    """Send one sealed row and record the outcome; 1 when it was sent. ``sealed`` gives the
    bytes to send (waiting for them) or raises what sealing raised.

    Whatever goes wrong with this one row is recorded on it: an unexpected error (a bug, a
    row the code cannot handle) is retried with backoff like a temporary failure and gives
    up after ``relay.max_age_days``, so it never stops the rows behind it.
    """
    try:
        data, encrypted = sealed()
        transport.send(env_from, to, data)
    except Hold as exc:
        log.error("outbox %s to %s held: %s", row_id, to, exc)
        _finish(factory, row_id, owner, status="held", last_error=str(exc)[:2000])
        return 0
    except PermanentFailure as exc:
        log.error("outbox %s to %s failed permanently: %s", row_id, to, exc)
        _finish(factory, row_id, owner, status="failed", attempts=attempts + 1,
                last_error=str(exc)[:2000])
        return 0
    except Exception as exc:  # noqa: BLE001 - one row must not stop the relay
        if not isinstance(exc, TemporaryFailure):
            log.error("outbox %s to %s: unexpected error", row_id, to, exc_info=True)
            exc = TemporaryFailure(failures.describe(exc))
        now = clock()
        if now - created > dt.timedelta(days=settings.max_age_days):
            log.error("outbox %s to %s: giving up after %s days: %s", row_id, to,
                      settings.max_age_days, exc)
            _finish(factory, row_id, owner, status="failed", attempts=attempts + 1,
                    last_error=f"gave up after {settings.max_age_days} days: {exc}"[:2000])
        else:
            delay = backoff(attempts + 1)
            log.warning("outbox %s to %s deferred %ss: %s", row_id, to, delay, exc)
            _finish(factory, row_id, owner, attempts=attempts + 1, last_error=str(exc)[:2000],
                    next_attempt_at=now + dt.timedelta(seconds=delay))
        return 0
    _finish(factory, row_id, owner, status="sent", attempts=attempts + 1, sent_at=clock(),
            last_error=None, encrypted=encrypted)
    log.info("outbox %s sent to %s", row_id, to)
    return 1


class NotRetryable(Exception):
    pass


def retry(session: Session, now: dt.datetime, row_id: int,
          find_key: Callable[[str], str | None] = lambda _to: None) -> Outbox:
    """Make a failed, held or deferred row due now.

    A row held for want of a key looks again: a list member's pinned key; else the case's
    pinned key, else the one key in the keyring with a user ID for the recipient (the
    operator just imported it), which is then pinned to the case. (A member's key is pinned
    only by proof, never by finding one in the keyring.)
    """
    row = session.get(Outbox, row_id)
    if row is None:
        raise LookupError(row_id)
    if row.must_encrypt and not row.encrypt_to and row.member_id is not None:
        member = session.get(Member, row.member_id)
        row.encrypt_to = member.fingerprint if member is not None else None
    elif row.must_encrypt and not row.encrypt_to:
        case = session.get(Case, row.case_id) if row.case_id else None
        handler = case is not None and row.to_addr == case.handler
        reporter = case is not None and not handler and row.to_addr in (
            case.reporter, (case.reply_to or "").lower())
        pinned = (case.handler_key if handler else case.reporter_key if reporter else None)
        key = pinned or find_key(row.to_addr)
        if key:
            row.encrypt_to = key
            if handler and not case.handler_key:
                case.handler_key = key
            elif reporter and not case.reporter_key:
                case.reporter_key = key
    if row.status == "sent":
        raise NotRetryable(f"outbox {row_id} was already sent at {row.sent_at.isoformat()}"
                           if row.sent_at else f"outbox {row_id} was already sent")
    if row.status == "failed":
        row.created_at = now  # a new delivery window: max_age_days counts from the retry
    row.status = "pending"
    row.next_attempt_at = now
    row.lease_owner, row.lease_until = None, None
    return row
