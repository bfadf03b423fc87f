"""The relay against real aiosmtpd servers: deferrals with Postfix's backoff, permanent
failures, an outage, giving up, STARTTLS / implicit TLS with AUTH, and the maildir."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import mailbox
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from sqlalchemy import select

from seclistd import daemon, relay
from seclistd.db import transaction
from seclistd.intake.store import accept
from seclistd.models import Outbox
from tests.components import CLOCK, Sink, cli, free_port, report
from tests.conftest import Env, make_env

T0 = CLOCK  # the clock of the CLI and daemons the tests start


def rows(env: Env) -> list[Outbox]:
    with env.factory() as session:
        return list(session.scalars(select(Outbox).order_by(Outbox.id)))


def drain(env: Env, when: dt.datetime, settings: Any = None) -> int:
    return daemon.drain_relay(settings or env.settings, env.factory, lambda: when)


def test_backoff_follows_postfix_defaults():
    assert [relay.backoff(n) for n in range(1, 7)] == [300, 600, 1200, 2400, 4000, 4000]


def test_temporary_failure_is_retried_with_backoff_then_delivered(env: Env, sink: Sink):
    sink.refuse["reporter1@example.net"] = "451 4.7.1 greylisted, try later"
    accept(env.factory, env.settings, report(1), source="ingest", now=T0)
    drain(env, T0)
    receipt = next(r for r in rows(env) if r.kind == "receipt")
    assert (receipt.status, receipt.attempts) == ("pending", 1)
    assert receipt.next_attempt_at == T0 + dt.timedelta(seconds=300)
    assert "451" in receipt.last_error

    assert drain(env, T0 + dt.timedelta(seconds=100)) == 0  # not due yet
    drain(env, T0 + dt.timedelta(seconds=301))
    receipt = next(r for r in rows(env) if r.kind == "receipt")
    assert receipt.attempts == 2
    assert receipt.next_attempt_at == T0 + dt.timedelta(seconds=301 + 600)

    del sink.refuse["reporter1@example.net"]
    drain(env, T0 + dt.timedelta(seconds=1000))
    receipt = next(r for r in rows(env) if r.kind == "receipt")
    assert (receipt.status, receipt.attempts) == ("sent", 3)
    assert len(sink.to("reporter1@example.net")) == 1


def test_permanent_failure_is_kept_as_failed_and_can_be_retried(env: Env, sink: Sink):
    sink.refuse["reporter1@example.net"] = "550 5.1.1 no such user"
    accept(env.factory, env.settings, report(1), source="ingest", now=T0)
    drain(env, T0)
    listing = cli(env.path, "outbox", "list", "--status", "failed", "--json")
    import json

    [failed] = json.loads(listing.stdout)
    assert failed["to"] == "reporter1@example.net" and failed["status"] == "failed"
    assert set(failed) >= {"id", "case_id", "to", "subject", "status", "attempts",
                           "message_id", "encrypted"}
    assert "550" in failed["last_error"]
    status = json.loads(cli(env.path, "status", "--json").stdout)
    assert status["outbox_by_status"]["failed"] == 1

    del sink.refuse["reporter1@example.net"]
    again = cli(env.path, "outbox", "retry", str(failed["id"]))
    assert again.returncode == 0, again.stderr
    assert cli(env.path, "run", "--once").returncode == 0
    assert len(sink.to("reporter1@example.net")) == 1
    sent_again = cli(env.path, "outbox", "retry", str(failed["id"]))
    assert sent_again.returncode == 1 and "already sent" in sent_again.stderr


def test_outage_queues_and_delivers_everything_once(env: Env, sink: Sink):
    sink.stop()
    for i in range(10):
        accept(env.factory, env.settings, report(i), source="ingest", now=T0)
    assert drain(env, T0) == 0
    assert {r.status for r in rows(env)} == {"pending"}
    assert all(r.attempts == 1 and "Connection" in (r.last_error or "") for r in rows(env))

    sink.start()
    assert drain(env, T0 + dt.timedelta(seconds=301)) == 20
    assert {r.status for r in rows(env)} == {"sent"}
    ids = [r.message["Message-ID"] for r in sink.messages()]
    assert len(ids) == 20 and len(set(ids)) == 20
    assert drain(env, T0 + dt.timedelta(hours=2)) == 0


def test_gives_up_after_max_age_and_says_so(env: Env, sink: Sink):
    sink.refuse["reporter1@example.net"] = "421 4.3.2 shutting down"
    accept(env.factory, env.settings, report(1), source="ingest", now=T0)
    drain(env, T0 + dt.timedelta(days=5, seconds=1))
    receipt = next(r for r in rows(env) if r.kind == "receipt")
    assert receipt.status == "failed"
    assert receipt.last_error.startswith("gave up after 5 days")


def test_a_crashed_relay_lease_is_released_at_restart(env: Env, sink: Sink):
    accept(env.factory, env.settings, report(1), source="ingest", now=T0)
    dead = subprocess.Popen(["true"])
    dead.wait()
    with transaction(env.factory) as session:
        claimed = relay.claim(session, T0, f"{relay.lease_owner().rpartition(':')[0]}:"
                                           f"{dead.pid}", 10, 300)
        assert len(claimed) == 2
    assert drain(env, T0) == 0  # leased by someone else
    with transaction(env.factory) as session:
        assert relay.release_dead_leases(session) == 2
    assert drain(env, T0) == 2


def test_maildir_transport_writes_one_file_per_recipient(tmp_path: Path):
    env = make_env(tmp_path)  # no relay port: maildir
    accept(env.factory, env.settings, report(1), source="ingest", now=T0)
    assert drain(env, T0) == 2
    box = mailbox.Maildir(tmp_path / "outgoing", create=False)
    delivered = sorted(m["Delivered-To"] for m in box)
    assert delivered == ["alice@example.org", "reporter1@example.net"]


def _tls_context(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(cert))
    return server, client


class AuthSink(Sink):
    logins: list[str]

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str,
                     auth_data: Any) -> AuthResult:
        ok = auth_data.login == b"relayuser" and auth_data.password == b"relay-secret"
        if ok:
            self.logins.append(mechanism)
        return AuthResult(success=ok, handled=False)


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_tls_and_auth(tmp_path: Path, security: str):
    server_ctx, client_ctx = _tls_context(tmp_path)
    sink = AuthSink(port=free_port())
    sink.logins = []
    kwargs: dict[str, Any] = {"authenticator": sink.authenticate, "auth_require_tls": True}
    if security == "tls":
        # aiosmtpd counts only STARTTLS as TLS for auth_require_tls; this channel is TLS.
        kwargs["auth_require_tls"] = False
        controller = Controller(sink, hostname="127.0.0.1", port=sink.port,
                                ssl_context=server_ctx, **kwargs)
    else:
        controller = Controller(sink, hostname="127.0.0.1", port=sink.port,
                                tls_context=server_ctx, require_starttls=True, **kwargs)
    controller.start()
    try:
        settings = make_env(tmp_path, relay_port=sink.port).settings
        settings = dataclasses.replace(settings, relay=dataclasses.replace(
            settings.relay, security=security, username="relayuser", password="relay-secret"))
        transport = relay.SmtpTransport(settings.relay, context=client_ctx)
        transport.send("security@example.org", "someone@example.net", report(1))
        transport.close()
        assert [r.rcpt_tos for r in sink.messages()] == [["someone@example.net"]]
        assert sink.logins

        wrong = relay.SmtpTransport(dataclasses.replace(settings.relay, password="nope"),
                                    context=client_ctx)
        with pytest.raises(relay.PermanentFailure):
            wrong.send("security@example.org", "someone@example.net", report(2))
        untrusted = relay.SmtpTransport(settings.relay)  # system CAs: the test cert fails
        with pytest.raises(relay.TemporaryFailure):
            untrusted.send("security@example.org", "someone@example.net", report(3))
    finally:
        controller.stop()


def test_doctor_creates_no_maildir_and_the_relay_fills_an_empty_one(tmp_path: Path):
    env = make_env(tmp_path)  # no relay port: maildir at tmp_path/outgoing
    outgoing = tmp_path / "outgoing"
    doctor = cli(env.path, "--json", "doctor")
    relay_check = next(r for r in json.loads(doctor.stdout) if r["name"] == "relay")
    assert relay_check["status"] == "ok"
    assert "created at the first delivery" in relay_check["detail"]
    assert not outgoing.exists()  # a read-only command wrote nothing
    outgoing.mkdir()  # an operator made it by hand, empty
    accept(env.factory, env.settings, report(1), source="ingest", now=T0)
    assert drain(env, T0) == 2
    assert len(list((outgoing / "new").iterdir())) == 2
