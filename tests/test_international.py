"""Internationalised mail end to end: raw UTF-8 headers (RFC 6532) and UTF-8 addresses
(RFC 6531) at intake, in storage, in the mail we write, and through the relay (SMTPUTF8
when the next hop offers it, a visible failure when it does not), and the maildir."""

from __future__ import annotations

import dataclasses
import datetime as dt
import mailbox
import smtplib
from pathlib import Path

import pytest
from sqlalchemy import select

from seclistd import daemon
from seclistd.intake.listener import Handler, make_controller
from seclistd.intake.store import accept
from seclistd.mail import compose
from seclistd.mail.parse import parse
from seclistd.models import Case, Outbox
from tests.components import Sink, cli, free_port, wait_port
from tests.conftest import Env, make_env
from tests.test_lifecycle import T0, at, sweep

NAME, ADDR = "José Müller", "víctim@exämple.net"


def utf8_report(i: int, from_header: str, *, subject: str = "Überlauf im Parser",
                headers: str = "") -> bytes:
    """A report as an SMTPUTF8 client sends it: raw UTF-8 in the header block."""
    return (f"From: {from_header}\r\nTo: security@example.org\r\nSubject: {subject}\r\n"
            f"Message-ID: <utf8-{i}@example.net>\r\nDate: Thu, 19 Nov 2026 10:00:00 +0000\r\n"
            f"{headers}MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            "The parser in version 1.2 overflows on a long line.\r\n").encode()


def drain(env: Env, when: dt.datetime) -> int:
    return daemon.drain_relay(env.settings, env.factory, lambda: when)


def case(env: Env, case_id: str = "SEC-2026-0001") -> Case:
    with env.factory() as session:
        found = session.get(Case, case_id)
        assert found is not None
        return found


def receipt_row(env: Env) -> Outbox:
    with env.factory() as session:
        return session.scalars(select(Outbox).where(Outbox.kind == "receipt")).one()


def test_raw_utf8_display_name_opens_a_case_and_the_receipt_names_it(env: Env, sink: Sink):
    outcome = accept(env.factory, env.settings, utf8_report(1, f"{NAME} <jose@example.net>"),
                     source="ingest", now=T0)
    assert (outcome.status, outcome.case_id) == ("processed", "SEC-2026-0001")
    opened = case(env)
    assert (opened.reporter, opened.reporter_name) == ("jose@example.net", NAME)
    assert opened.subject == "Überlauf im Parser"
    drain(env, T0)
    [receipt] = sink.to("jose@example.net")
    to = receipt.message["To"].addresses[0]
    assert (to.display_name, to.addr_spec) == (NAME, "jose@example.net")
    assert receipt.raw.isascii()  # an ASCII address needs no SMTPUTF8: the name is encoded
    assert "SMTPUTF8" not in receipt.mail_options
    assert f"Hello {NAME}" in receipt.message.get_body().get_content()
    assert receipt.message["Subject"] == "[SEC-2026-0001] Überlauf im Parser"


def test_internationalised_address_is_stored_and_answered_with_smtputf8(env: Env, sink: Sink):
    accept(env.factory, env.settings, utf8_report(1, f"{NAME} <{ADDR}>"), source="ingest",
           now=T0)
    assert case(env).reporter == ADDR
    assert drain(env, T0) == 2
    [receipt] = sink.to(ADDR)
    assert "SMTPUTF8" in receipt.mail_options
    assert receipt.message["To"].addresses[0].addr_spec == ADDR
    assert receipt.message["To"].addresses[0].display_name == NAME
    assert not receipt.message.defects
    # A reply from the same address lands on the case and gets no automatic answer.
    reply = accept(env.factory, env.settings,
                   utf8_report(2, ADDR, subject="Re: [SEC-2026-0001] Überlauf im Parser"),
                   source="ingest", now=T0 + dt.timedelta(hours=1))
    assert (reply.case_id, reply.route) == ("SEC-2026-0001", "reply")
    shown = cli(env.path, "cases", "show", "SEC-2026-0001")
    assert shown.returncode == 0 and ADDR in shown.stdout


def test_bulk_mail_with_a_utf8_return_path_gets_its_fallback_ack(env: Env, sink: Sink):
    """The issue's reproduction: no receipt (Precedence: bulk); the fallback acknowledgment
    at the deadline goes to the UTF-8 return path, and the sweep records no failure."""
    accept(env.factory, env.settings,
           utf8_report(1, "Reporter <reporter1@example.net>",
                       headers=f"Return-Path: <{ADDR}>\r\nPrecedence: bulk\r\n"),
           source="ingest", now=T0)
    assert case(env).reply_to == ADDR
    assert sweep(env, at(25, 1)) == 1
    drain(env, at(25, 1))
    acknowledged = case(env)
    assert (acknowledged.state, acknowledged.sweep_error) == ("acknowledged", None)
    [ack] = sink.to(ADDR)
    assert "SMTPUTF8" in ack.mail_options
    assert ack.message["Subject"] == "[SEC-2026-0001] Re: Überlauf im Parser"


def test_a_next_hop_without_smtputf8_fails_the_row_visibly(tmp_path: Path):
    plain = Sink(port=free_port(), smtputf8=False)
    plain.start()
    try:
        env = make_env(tmp_path, relay_port=plain.port)
        accept(env.factory, env.settings, utf8_report(1, f"{NAME} <{ADDR}>"), source="ingest",
               now=T0)
        accept(env.factory, env.settings, utf8_report(2, f"{NAME} <jose@example.net>"),
               source="ingest", now=T0)
        assert drain(env, T0) == 3  # two team notices and the ASCII address's receipt
        assert len(plain.to("jose@example.net")) == 1
        assert not plain.to(ADDR)
        with env.factory() as session:
            row = session.scalars(select(Outbox).where(Outbox.to_addr == ADDR)).one()
        assert (row.status, row.attempts) == ("failed", 1)
        assert row.last_error.startswith("the next hop does not offer SMTPUTF8")
        listing = cli(env.path, "outbox", "list", "--status", "failed")
        assert "the next hop does not offer SMTPUTF8" in listing.stdout
        assert drain(env, T0 + dt.timedelta(days=1)) == 0  # not retried by itself
    finally:
        plain.stop()


def test_maildir_transport_writes_utf8(tmp_path: Path):
    env = make_env(tmp_path)  # no relay port: the maildir
    accept(env.factory, env.settings, utf8_report(1, f"{NAME} <{ADDR}>"), source="ingest",
           now=T0)
    assert drain(env, T0) == 2
    box = mailbox.Maildir(tmp_path / "outgoing", create=False)
    [raw] = [box.get_bytes(key) for key in box.iterkeys()
             if f"Delivered-To: {ADDR}".encode() in box.get_bytes(key)]
    assert f"To: {NAME} <{ADDR}>".encode() in raw


def test_the_listener_takes_smtputf8_mail(env: Env):
    port = free_port()
    settings = dataclasses.replace(env.settings, listener=dataclasses.replace(
        env.settings.listener, port=port, host="127.0.0.1"))
    controller = make_controller(settings, Handler(settings, env.factory, lambda: T0))
    controller.start()
    try:
        wait_port(port)
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.sendmail(ADDR, ["security@example.org"],
                            utf8_report(1, f"{NAME} <{ADDR}>"), mail_options=["SMTPUTF8"])
    finally:
        controller.stop()
    opened = case(env)
    assert (opened.reporter, opened.reply_to, opened.reporter_name) == (ADDR, ADDR, NAME)


# Quoted, so that it parses (unquoted, the colon makes it a malformed group: quarantined).
HOSTILE_NAME = '"José\u2028Bcc: evil@example.com\u0085X"'


def test_no_header_injection_through_utf8_names_or_subjects(env: Env, sink: Sink):
    accept(env.factory, env.settings,
           utf8_report(1, f"{HOSTILE_NAME} <{ADDR}>",
                       subject="Grüße\u2028Bcc: evil@example.com\x00 =?utf-8?q?x=0D=0ACc:_e@x?="),
           source="ingest", now=T0)
    drain(env, T0)
    [receipt] = sink.to(ADDR)
    msg = receipt.message
    assert msg["Bcc"] is None and msg["Cc"] is None
    assert [a.addr_spec for a in msg["To"].addresses] == [ADDR]
    assert receipt.rcpt_tos == [ADDR]
    for line in receipt.raw.split(b"\r\n\r\n")[0].split(b"\r\n"):
        assert b"\x00" not in line and "\u2028".encode() not in line and b"\r" not in line


@pytest.mark.parametrize(("header", "problem"), [
    ("víctim@exämple.net)<bob@example.org>", "malformed"),  # CVE-2023-27043, UTF-8 too
    ("Mallory <vi\u202ectim@example.net>", "characters no mail address may hold"),
    ("a@b.c, víctim@exämple.net", "2 addresses"),
])
def test_utf8_from_headers_are_still_read_strictly(header: str, problem: str):
    mail = parse(f"From: {header}\r\n\r\nbody\r\n".encode())
    assert mail.from_addr is None and problem in (mail.from_problem or "")


def test_8bit_bytes_that_are_not_utf8_never_become_an_address():
    latin1 = parse("From: Jos\xe9 <jose@example.net>\r\nReturn-Path: <j\xf6@x.net>\r\n\r\nb"
                   .encode("latin-1"))
    assert (latin1.from_addr, latin1.from_name) == ("jose@example.net", "Jos\ufffd")
    assert latin1.return_path is None  # unreadable: answers go to From
    mangled = parse("From: <j\xf6se@example.net>\r\n\r\nb".encode("latin-1"))
    assert mangled.from_addr is None
    assert "characters no mail address may hold" in (mangled.from_problem or "")


def test_compose_writes_utf8_addresses_and_refuses_mangled_ones():
    assert compose.format_address(compose.address(ADDR, "Zoë, QA")) == f'"Zoë, QA" <{ADDR}>'
    assert compose.format_address(compose.address("zoe@example.net", "Zoë")) == \
        "=?utf-8?q?Zo=C3=AB?= <zoe@example.net>"
    with pytest.raises(compose.BadAddress):
        compose.address("v\ufffdctim@example.net")
