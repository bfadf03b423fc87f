"""`seclistd doctor`: each check passing and failing against real components (Dovecot, the
aiosmtpd sink as relay, real gpg homes, SQLite), its fix, the exit codes and the JSON shape.

gpg stamps keys with the machine's clock, so the doctor runs on that clock here
(``MACHINE_CLOCK``) and expiries are relative to it (a key made with ``expire="10d"``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from seclistd import config, db
from seclistd.db import transaction
from seclistd.list_models import Member
from seclistd.workflows import member_states
from tests.components import MACHINE_CLOCK, Dovecot, Sink, cli, free_port, write_config
from tests.pgp import Home, new_home

ALICE = "alice@example.org"
MEMBER = "security@distro.example"
LISTS = """
[[lists]]
name = "distributors"
address = "distributors@example.org"
criteria = "oci"
"""
NAMES = ["config", "database", "imap", "relay", "gnupg_home", "project_key", "team_keys",
         "member_keys", "members_suspended", "python", "dependencies"]


@dataclasses.dataclass
class Setup:
    tmp: Path
    path: Path
    project: Home
    project_fpr: str
    alice: Home
    alice_fpr: str
    sink: Sink
    started: dt.datetime = dataclasses.field(default_factory=lambda: dt.datetime.now(dt.UTC))

    def write(self, **kwargs: object) -> Path:
        """The config with these ``write_config`` arguments changed; readable by its owner."""
        args: dict[str, object] = {
            "relay_port": self.sink.port, "team": [ALICE], "gnupg_home": self.project.path,
            "gnupg_key": self.project_fpr, "fingerprints": {ALICE: self.alice_fpr},
            "extra": LISTS, **kwargs}
        self.path = write_config(self.tmp, **args)  # type: ignore[arg-type]
        self.path.chmod(0o600)
        return self.path

    def doctor(self, at: dt.datetime | None = MACHINE_CLOCK
               ) -> tuple[int, dict[str, dict[str, str]]]:
        done = cli(self.path, "--json", "doctor", at=at)
        rows = json.loads(done.stdout)
        return done.returncode, {r["name"]: r for r in rows}

    def add_member(self, email: str, fingerprint: str | None) -> None:
        settings = config.load(str(self.path))
        factory = db.session_factory(db.make_engine(settings.database.url))
        with transaction(factory) as session:
            member_states.add_member(session, list_name="distributors", email=email,
                                     organization="Distro", actor="test", now=self.started,
                                     fingerprint=fingerprint)


@pytest.fixture
def setup(tmp_path: Path, sink: Sink) -> Iterator[Setup]:
    project, alice = new_home(), new_home()
    try:
        project_fpr = project.generate("Example security team", "security@example.org")
        alice_fpr = alice.generate("Alice", ALICE)
        project.gpg.import_keys(alice.export(alice_fpr))
        s = Setup(tmp_path, tmp_path / "seclistd.toml", project, project_fpr, alice,
                  alice_fpr, sink)
        s.write()
        db.migrate(config.load(str(s.path)).database.url)
        yield s
    finally:
        for home in (project, alice):
            home.close()


def test_all_checks_pass_exit_0_and_json_shape(setup: Setup):
    code, results = setup.doctor()
    assert [r for r in results.values() if r["status"] != "ok"] == []
    assert code == 0
    assert list(results) == NAMES
    for row in results.values():
        assert set(row) == {"name", "status", "detail", "fix"} and row["fix"] == ""
    assert "no mail sent" in results["relay"]["detail"]
    assert setup.sink.messages() == []  # the relay check sent nothing
    assert setup.project_fpr in results["project_key"]["detail"]
    assert "Python 3." in results["python"]["detail"]
    assert "SQLAlchemy" in results["dependencies"]["detail"]
    human = cli(setup.path, "doctor", at=MACHINE_CLOCK)
    assert human.returncode == 0 and "0 failed" in human.stdout
    assert "OK   team_keys:" in human.stdout


def test_invalid_config_fails_with_exit_2_and_the_fix(setup: Setup):
    setup.path.write_text(setup.path.read_text() + "\n[bogus]\nx = 1\n")
    done = cli(setup.path, "--json", "doctor", at=MACHINE_CLOCK)
    assert done.returncode == 2, done.stderr
    [row] = json.loads(done.stdout)
    assert row["name"] == "config" and row["status"] == "fail"
    assert "bogus" in row["detail"] and "check-config" in row["fix"]
    human = cli(setup.path, "doctor", at=MACHINE_CLOCK)
    assert human.returncode == 2 and "FAIL config:" in human.stdout
    assert "Traceback" not in human.stderr


def test_secrets_in_a_config_others_can_read_are_a_warning(setup: Setup):
    setup.path.chmod(0o644)  # write_config writes imap.password inline
    code, results = setup.doctor()
    assert results["config"]["status"] == "warn" and "imap.password" in results["config"]["detail"]
    assert f"chmod o-r {setup.path}" in results["config"]["fix"]
    assert code == 0  # a warning does not fail


def test_database_missing_unmigrated_unreachable(setup: Setup, tmp_path: Path):
    setup.write(db_url=f"sqlite:///{tmp_path}/other.db")
    code, results = setup.doctor()
    assert code == 1 and results["database"]["status"] == "fail"
    assert "run `seclistd migrate`" in results["database"]["fix"]
    assert not (tmp_path / "other.db").exists()  # doctor created nothing
    # Members cannot be checked without the database: said, not failed twice.
    assert results["member_keys"]["status"] == "warn"
    with sqlite3.connect(tmp_path / "other.db") as empty:  # a database, no schema
        empty.execute("CREATE TABLE unrelated (x INTEGER)")
    code, results = setup.doctor()
    assert "no schema" in results["database"]["detail"]
    assert "seclistd migrate" in results["database"]["fix"]
    setup.write(db_url=f"postgresql://nobody@127.0.0.1:{free_port()}/nothing")
    code, results = setup.doctor()
    assert code == 1 and "cannot connect" in results["database"]["detail"]
    assert "check database.url" in results["database"]["fix"]


def test_imap_login_and_folders(setup: Setup, dovecot: Dovecot):
    setup.write(imap=dovecot)
    code, results = setup.doctor()
    assert results["imap"]["status"] == "ok" and dovecot.user in results["imap"]["detail"]
    # A fresh mailbox has INBOX only: the daemon creates the other two, a warning.
    folders = results["imap_folders"]
    assert folders["status"] == "warn" and "seclistd-processed" in folders["detail"]
    assert code == 0
    assert dovecot.count("seclistd-processed") == 0  # still not there: doctor created nothing
    client = dovecot.client()
    assert not client.folder_exists("seclistd-processed")
    client.create_folder("seclistd-processed")
    client.create_folder("seclistd-quarantine")
    client.logout()
    code, results = setup.doctor()
    assert results["imap_folders"]["status"] == "ok" and code == 0

    setup.path.write_text(setup.path.read_text().replace(
        "poll_interval = 2", 'folder = "Nope"\npoll_interval = 2'))
    code, results = setup.doctor()
    assert code == 1 and results["imap_folders"]["status"] == "fail"
    assert "'Nope'" in results["imap_folders"]["detail"] and "imap.folder" in results[
        "imap_folders"]["fix"]

    setup.write(imap=dovecot)
    setup.path.write_text(setup.path.read_text().replace('password = "test-password"',
                                                         'password = "wrong"'))
    code, results = setup.doctor()
    assert code == 1 and results["imap"]["status"] == "fail"
    assert "refused" in results["imap"]["detail"]
    assert "imap.password" in results["imap"]["fix"]


def test_relay_closed_port_starttls_and_auth(setup: Setup):
    setup.write(relay_port=free_port())
    code, results = setup.doctor()
    assert code == 1 and results["relay"]["status"] == "fail"
    assert "cannot connect" in results["relay"]["detail"]
    assert "check relay.host, relay.port" in results["relay"]["fix"]

    # The sink offers no STARTTLS: configured, it fails and says what to set.
    setup.write()
    setup.path.write_text(setup.path.read_text().replace('security = "none"\nmaildir',
                                                         'security = "starttls"\nmaildir'))
    code, results = setup.doctor()
    assert code == 1 and "does not offer STARTTLS" in results["relay"]["detail"]
    assert "relay.security" in results["relay"]["fix"]


class _Auth:
    """A relay that requires AUTH (plaintext allowed: a loopback test server)."""

    def __call__(self, server, session, envelope, mechanism, auth_data):  # noqa: ANN001
        def text(value: object) -> str:
            return value.decode() if isinstance(value, bytes) else str(value)

        good = text(auth_data.login) == "seclistd" and text(auth_data.password) == "right"
        return AuthResult(success=good, handled=False)  # not handled: aiosmtpd answers 535


def test_relay_auth_is_tried_and_no_mail_sent(setup: Setup):
    received: list[object] = []

    class Handler:
        async def handle_DATA(self, server, session, envelope):  # noqa: ANN001
            received.append(envelope)
            return "250 OK"

    port = free_port()
    controller = Controller(Handler(), hostname="127.0.0.1", port=port,
                            authenticator=_Auth(), auth_require_tls=False)
    controller.start()
    try:
        for password, status in (("wrong", "fail"), ("right", "ok")):
            setup.write(relay_port=port)
            setup.path.write_text(setup.path.read_text().replace(
                'security = "none"\nmaildir', f'security = "none"\nusername = "seclistd"\n'
                f'password = "{password}"\nmaildir'))
            code, results = setup.doctor()
            assert results["relay"]["status"] == status, results["relay"]
            if status == "fail":
                assert code == 1 and "AUTH as seclistd refused" in results["relay"]["detail"]
                assert "relay.password" in results["relay"]["fix"]
            else:
                assert code == 0 and "AUTH as seclistd" in results["relay"]["detail"]
        assert received == []
    finally:
        controller.stop()


def test_gnupg_home_mode_and_missing(setup: Setup, tmp_path: Path):
    setup.project.path.chmod(0o755)
    code, results = setup.doctor()
    assert code == 1 and results["gnupg_home"]["status"] == "fail"
    assert f"chmod 700 {setup.project.path}" in results["gnupg_home"]["fix"]
    setup.project.path.chmod(0o700)
    setup.write(gnupg_home=tmp_path / "nowhere")
    code, results = setup.doctor()
    assert results["gnupg_home"]["status"] == "fail"
    assert "keys generate" in results["gnupg_home"]["fix"]
    assert results["project_key"]["status"] == "fail"
    assert results["team_keys"]["status"] == "fail"
    assert not (tmp_path / "nowhere").exists()


def test_project_key_expiring_in_10_days_fails(setup: Setup):
    short = setup.project.generate("Example security team", "security@example.org",
                                   expire="10d")
    setup.write(gnupg_key=short)
    code, results = setup.doctor()
    key = results["project_key"]
    assert code == 1 and key["status"] == "fail"
    assert short in key["detail"] and ("in 9 days" in key["detail"]
                                       or "in 10 days" in key["detail"])
    assert "--quick-set-expire" in key["fix"]
    # Without its secret: a public key alone is not a project key.
    other = new_home()
    try:
        public_only = other.generate("Someone", "someone@example.net")
        setup.project.gpg.import_keys(other.export(public_only))
    finally:
        other.close()
    setup.write(gnupg_key=public_only)
    code, results = setup.doctor()
    assert results["project_key"]["status"] == "fail"
    assert "no secret key" in results["project_key"]["detail"]


def test_team_key_missing_expiring_and_unpinned(setup: Setup):
    bob = new_home()
    try:
        bob_fpr = bob.generate("Bob", "bob@example.org", expire="10d")
        setup.write(team=[ALICE, "bob@example.org"],
                    fingerprints={ALICE: setup.alice_fpr, "bob@example.org": bob_fpr})
        code, results = setup.doctor()
        team = results["team_keys"]
        assert code == 1 and team["status"] == "fail"
        assert f"bob@example.org: key {bob_fpr} is not in the keyring" in team["detail"]
        assert "keys import" in team["fix"]
        setup.project.gpg.import_keys(bob.export(bob_fpr))
        code, results = setup.doctor()
        assert results["team_keys"]["status"] == "warn" and code == 0
        assert "bob@example.org" in results["team_keys"]["detail"]
        # Past its expiry, it fails.
        code, results = setup.doctor(at=dt.datetime.now(dt.UTC) + dt.timedelta(days=11))
        assert results["team_keys"]["status"] == "fail"
        assert "expired on" in results["team_keys"]["detail"]
    finally:
        bob.close()
    setup.write(team=[ALICE, "carol@example.org"])
    code, results = setup.doctor()
    assert results["team_keys"]["status"] == "warn"
    assert "carol@example.org: no fingerprint" in results["team_keys"]["detail"]


def test_member_keys_and_suspended_members(setup: Setup):
    distro = new_home()
    try:
        fpr = distro.generate("Distro security", MEMBER, expire="10d")
        setup.add_member(MEMBER, fpr)
        code, results = setup.doctor()
        keys = results["member_keys"]
        assert code == 1 and keys["status"] == "fail"
        assert f"{MEMBER} (distributors): key {fpr} is not in the keyring" in keys["detail"]
        setup.project.gpg.import_keys(distro.export(fpr))
        code, results = setup.doctor()  # expires within key_expiry_warning_days (14)
        assert results["member_keys"]["status"] == "warn" and code == 0
        assert "expires on" in results["member_keys"]["detail"]
        code, results = setup.doctor(at=dt.datetime.now(dt.UTC) + dt.timedelta(days=11))
        assert results["member_keys"]["status"] == "fail"
        assert "expired on" in results["member_keys"]["detail"]
    finally:
        distro.close()
    setup.add_member("nokey@other.example", None)
    settings = config.load(str(setup.path))
    factory = db.session_factory(db.make_engine(settings.database.url))
    with transaction(factory) as session:
        from sqlalchemy import select

        for member in session.scalars(select(Member)):
            member_states.change_state(session, member, "suspend", actor="test",
                                       now=setup.started, reason="bounces since March")
    code, results = setup.doctor()
    suspended = results["members_suspended"]
    assert suspended["status"] == "warn" and code == 0
    assert "nokey@other.example (distributors): bounces since March" in suspended["detail"]
    assert "members resume" in suspended["fix"]
    assert results["member_keys"]["detail"] == "no active members"


def test_a_server_echoing_the_login_does_not_put_the_password_in_doctor(setup: Setup):
    """A server (or proxy) whose refusal quotes the LOGIN command it got: doctor quotes the
    refusal, never the password in it."""
    import socketserver
    import threading
    from types import SimpleNamespace

    from tests.components import IMAP_PASSWORD

    class Echo(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(b"* OK [CAPABILITY IMAP4rev1] ready\r\n")
            for line in self.rfile:
                tag, _, rest = line.decode().strip().partition(" ")
                if rest.upper() == "CAPABILITY":
                    self.wfile.write(f"* CAPABILITY IMAP4rev1\r\n{tag} OK done\r\n".encode())
                    continue
                self.wfile.write(f"{tag} NO [AUTHENTICATIONFAILED] got: {rest}\r\n".encode())

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        setup.write(imap=SimpleNamespace(port=server.server_address[1], user="sec"))
        done = cli(setup.path, "--json", "doctor", at=MACHINE_CLOCK)
        human = cli(setup.path, "doctor", at=MACHINE_CLOCK)
    finally:
        server.shutdown()
        server.server_close()
    row = {r["name"]: r for r in json.loads(done.stdout)}["imap"]
    assert row["status"] == "fail" and "refused" in row["detail"]
    assert "[secret]" in row["detail"]
    for out in (done.stdout, done.stderr, human.stdout, human.stderr):
        assert IMAP_PASSWORD not in out
