"""Hostile input: Python's own malformed-mail corpus and generated attacks. No crash; every
message ends as a case, a reply on a case, or in quarantine with a reason; nothing is lost;
outgoing mail stays well-formed."""

from __future__ import annotations

import datetime as dt
import mailbox
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from sqlalchemy import func, select

from seclistd import daemon
from seclistd.intake.store import accept
from seclistd.models import Message
from tests.conftest import Env, make_env

NOW = dt.datetime(2026, 11, 19, 15, 0, tzinfo=dt.UTC)


def stdlib_corpus() -> list[tuple[str, bytes]]:
    """The standard library's email test data (Lib/test/test_email/data)."""
    try:
        import test.test_email
    except ImportError:  # Debian ships it separately, in libpython3.11-testsuite
        pytest.fail("the stdlib test package is missing: apt-get install libpython3.11-testsuite")
    data = Path(test.test_email.__file__).parent / "data"
    files = sorted(p for p in data.iterdir() if p.suffix == ".txt")
    assert len(files) > 40
    return [(f"stdlib/{p.name}", p.read_bytes()) for p in files]


def nested(depth: int) -> bytes:
    head = b"From: deep@example.net\r\nSubject: deep\r\nMIME-Version: 1.0\r\n"
    parts = [head]
    for i in range(depth):
        parts.append(f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n--b{i}\r\n'.encode())
    parts.append(b"Content-Type: text/plain\r\n\r\nbottom\r\n")
    for i in reversed(range(depth)):
        parts.append(f"--b{i}--\r\n".encode())
    return b"".join(parts)


def generated() -> list[tuple[str, bytes]]:
    base = (b"From: Mallory <mallory@example.net>\r\nTo: security@example.org\r\n"
            b"Subject: %s\r\nMessage-ID: <%s@example.net>\r\n%s\r\n%s")

    def msg(name: str, subject: bytes = b"hello", headers: bytes = b"",
            body: bytes = b"body\r\n") -> tuple[str, bytes]:
        return name, base % (subject, name.encode(), headers, body)

    return [
        ("deep-mime-1000", nested(1000)),
        ("deep-mime-60", nested(60)),
        msg("huge-header", headers=b"X-Junk: " + b"a" * 200_000 + b"\r\n"),
        msg("many-addresses", headers=b"Cc: " + b", ".join(
            f"u{i}@example.com".encode() for i in range(40_000)) + b"\r\n"),
        msg("bad-charset", headers=b"Content-Type: text/plain; charset=x-no-such-charset\r\n",
            body=b"\xff\xfe\xfd caf\xe9\r\n"),
        msg("bad-encoded-word", subject=b"=?x-unknown?q?caf=E9?= =?utf-8?b?!!!notbase64?="),
        # Encoded words that decode to CR LF and a header (CVE-2024-6923), each from a sender
        # of its own so that each gets a receipt whose headers are checked below.
        ("crlf-subject", b"From: sub@example.net\r\nMessage-ID: <crlf-subject@example.net>\r\n"
                         b"Subject: =?utf-8?q?x=0D=0ABcc:_evil@x.example=0D=0AX-Evil:_1?=\r\n"
                         b"\r\nbody\r\n"),
        ("crlf-from-name", b"From: =?utf-8?q?Eve=0D=0AX-Evil:_1?= <eve2@example.net>\r\n"
                           b"Subject: hi\r\n\r\nbody\r\n"),
        ("crlf-in-from", b"From: =?utf-8?q?Eve=0D=0ABcc:_x@y.example?= <eve@example.net>\r\n"
                         b"Subject: hi\r\n\r\nbody\r\n"),
        ("bare-lf", b"From: lf@example.net\nSubject: bare LF\nTo: security@example.org\n\nbody\n"),
        ("bare-cr", b"From: cr@example.net\rSubject: bare CR\r\rbody\r"),
        ("binary-junk", bytes(range(256)) * 40),
        ("nul-bytes", b"From: nul@example.net\r\nSubject: a\x00b\r\n\r\nbo\x00dy\r\n"),
        ("empty", b""),
        ("headers-only", b"From: only@example.net\r\nSubject: no body"),
        ("no-from", b"Subject: anonymous\r\n\r\nwho am I\r\n"),
        ("two-froms", b"From: a@example.net, b@example.net\r\nSubject: x\r\n\r\nbody\r\n"),
        ("cve-2023-27043", b"From: alice@example.org)<bob@example.org>\r\nSubject: x\r\n\r\nb\r\n"),
        msg("bad-base64", headers=b"Content-Type: text/plain\r\n"
            b"Content-Transfer-Encoding: base64\r\n", body=b"!!!! not base64 ====\r\n"),
        msg("unterminated-multipart", headers=b'MIME-Version: 1.0\r\n'
            b'Content-Type: multipart/mixed; boundary="zz"\r\n', body=b"--zz\r\nContent-Type: "
            b"text/plain\r\n\r\nno end boundary\r\n"),
        msg("html-only", headers=b"Content-Type: text/html\r\n",
            body=b"<html><script>alert(1)</script><p>PoC &amp; details</p></html>\r\n"),
        msg("long-line", body=b"x" * 500_000 + b"\r\n"),
        msg("bad-date", headers=b"Date: the day after tomorrow\r\n"),
        msg("utf8-headers", subject="Sicherheitslücke 🔥".encode()),
        msg("huge-message-id", headers=b"In-Reply-To: <" + b"a" * 5000 + b"@x>\r\n"),
        ("from-ourselves", b"From: security@example.org\r\nSubject: me\r\n\r\nloop\r\n"),
    ]


def test_hostile_corpus(tmp_path: Path):
    env: Env = make_env(tmp_path)  # relay to a maildir: every answer is written out
    corpus = stdlib_corpus() + generated()
    outcomes = {}
    for name, raw in corpus:
        outcomes[name] = accept(env.factory, env.settings, raw, source="ingest", now=NOW)

    for name, outcome in outcomes.items():
        assert outcome.status in ("processed", "quarantined"), name
        if outcome.status == "quarantined":
            assert outcome.reason, name
        elif not outcome.duplicate:
            assert outcome.case_id, name  # a case or a reply on one
            assert outcome.route in ("new_report", "reply", "bounce", "auto_reply"), name

    distinct = len({raw for _, raw in corpus})
    with env.factory() as session:
        assert session.scalar(select(func.count(Message.id))) == distinct
        assert session.scalar(select(func.count(Message.id)).where(
            Message.status == "pending")) == 0
        assert "internal error" not in " ".join(
            session.scalars(select(Message.quarantine_reason).where(
                Message.quarantine_reason.is_not(None))))

    assert "MIME" in outcomes["deep-mime-1000"].reason
    assert "header block" in outcomes["huge-header"].reason
    assert "header block" in outcomes["many-addresses"].reason
    assert outcomes["binary-junk"].status == "quarantined"
    assert outcomes["deep-mime-60"].status == "processed"
    # Released without limits, the 1000-deep message still ends in quarantine, not a crash.
    from seclistd.intake.store import release

    again = release(env.factory, env.settings, outcomes["deep-mime-1000"].id, NOW)
    assert again.status == "quarantined" and "too deep" in again.reason
    assert outcomes["bad-charset"].status == "processed"

    daemon.drain_relay(env.settings, env.factory, lambda: NOW)
    box = mailbox.Maildir(tmp_path / "outgoing", create=False)
    sent = [message_from_bytes(box.get_bytes(key), policy=policy.default)
            for key in box.iterkeys()]
    assert sent
    # A sender whose name hides a header cannot be read: quarantined, never answered.
    for name in ("crlf-in-from", "crlf-from-name"):
        assert "From header cannot be read" in outcomes[name].reason
    # The subject that hides headers is answered, and quoted in the answer's subject ...
    [answer] = [m for m in sent if m["Delivered-To"] == "sub@example.net"]
    assert answer["Subject"].endswith("x Bcc: evil@x.example X-Evil: 1")
    for m in sent:
        assert m["Bcc"] is None and m["X-Evil"] is None  # ... and none of them took
        assert "\n" not in (m["Subject"] or "") and "\r" not in (m["Subject"] or "")
        assert not m.defects
