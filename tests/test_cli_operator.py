"""The command line as a new operator meets it (issue 8, "operator rough edges"): credit
by the project's default and never "as you asked" without a wish; empty text refused; no
traceback ever (a second daemon, a closed pipe, the unexpected); --json and --version;
relative paths from the config's own directory and no database created by a read-only
command; handlers outside the team get their mail encrypted or held; help that says what
the values are."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import pty
import re
import subprocess
import sys
from collections.abc import Iterator
from email import message_from_bytes, policy
from importlib import metadata
from pathlib import Path

import pytest
from sqlalchemy import func, select

from seclistd import config, daemon, db
from seclistd.cli import build_parser
from seclistd.models import Case, Outbox
from tests.components import (
    MACHINE_CLOCK,
    Sink,
    cli,
    faketime_env,
    free_port,
    report,
    start_daemon,
    write_config,
)
from tests.conftest import Env, make_env
from tests.pgp import Home, new_home

ROOT = Path(__file__).resolve().parent.parent
CASE_ID = re.compile(r"new case (\S+)")

# Commands run directly (a terminal, a closed pipe): on the machine's clock, as cli() runs it
# for MACHINE_CLOCK.
MACHINE_ENV = {**os.environ, **faketime_env(MACHINE_CLOCK)}


def ingest(env: Env, raw: bytes) -> str:
    done = cli(env.path, "ingest", "-", input=raw)
    assert done.returncode == 0, done.stderr
    return CASE_ID.search(done.stdout).group(1)


def ok(env: Env, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[str]:
    done = cli(env.path, *args, input=input)
    assert done.returncode == 0, (args, done.stderr)
    return done


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


def body_of(row: Outbox) -> str:
    text = message_from_bytes(row.raw, policy=policy.default).get_body().get_content()
    return text.replace("\r\n", "\n")


def outbox(env: Env, case_id: str, kind: str) -> list[Outbox]:
    with env.factory() as session:
        return list(session.scalars(select(Outbox).where(Outbox.case_id == case_id,
                                                         Outbox.kind == kind)))


def deliver(path: Path) -> None:
    """Send what is due (in-process, at a time after every row's, whatever clock the
    commands that queued them ran under)."""
    settings = config.load(str(path))
    engine = db.make_engine(settings.database.url)
    factory = db.session_factory(engine)
    with factory() as session:
        latest = session.scalar(select(func.max(Outbox.next_attempt_at)))
    when = (latest or dt.datetime.now(dt.UTC)) + dt.timedelta(minutes=1)
    daemon.drain_relay(settings, factory, lambda: when)
    engine.dispose()


def disclose(env: Env, case_id: str) -> str:
    ok(env, "cases", "ack", case_id, "-m", "We are looking into it.")
    ok(env, "cases", "confirm", case_id)
    ok(env, "cases", "disclose", case_id, "-m", "Fixed in 1.4.3.")
    [row] = outbox(env, case_id, "disclose")
    return body_of(row)


def with_project_key(path: Path, line: str) -> None:
    text = path.read_text()
    path.write_text(text.replace('timezone = "America/New_York"',
                                 f'timezone = "America/New_York"\n{line}', 1))


# -- 1. credit -----------------------------------------------------------------------------

def test_a_reporter_who_never_said_is_credited_by_default_never_as_they_asked(env: Env):
    case_id = ingest(env, report(1))  # "Reporter 1", no word about credit
    shown = json.loads(ok(env, "cases", "show", case_id, "--json").stdout)
    assert not any("credit" in item for item in shown["missing_information"])
    [receipt] = outbox(env, case_id, "receipt")
    asked = body_of(receipt)
    assert "Optional: tell us how you would like to be credited" in asked
    # The default is said, without quoting the stranger's name once more (backscatter).
    assert "the advisory will credit you by the name your mail came with" in asked

    text = disclose(env, case_id)
    assert "As you asked" not in text
    assert "You did not tell us how you wish to be credited" in text
    assert "Reporter 1" in text
    events = json.loads(ok(env, "cases", "show", case_id, "--json").stdout)["events"]
    assert "the reporter did not say" in events[-1]["detail"]


def test_the_default_can_be_anonymous_and_a_stated_wish_wins(env: Env):
    with_project_key(env.path, 'default_credit = "anonymous"')
    silent = ingest(env, report(1))
    [receipt] = outbox(env, silent, "receipt")
    assert "If you do not say,\nthe advisory will not name you." in body_of(receipt)
    text = disclose(env, silent)
    assert "As you asked" not in text and "Reporter 1" not in text
    assert "The advisory does not name you. If you would like to be credited" in text

    # "anonymous" about the attacker is no wish; "keep me anonymous" is one.
    attacker = ingest(env, report(2, body="An anonymous user can read every file in 1.2."))
    assert "As you asked" not in disclose(env, attacker)
    wish = ingest(env, report(3, body="Version 1.3 leaks keys. Please keep me anonymous."))
    [receipt] = outbox(env, wish, "receipt")
    assert "Optional: tell us how" not in body_of(receipt)  # they already said
    assert "As you asked, the advisory does not name you." in disclose(env, wish)


def test_a_reporter_without_a_name_is_not_named_and_is_asked(env: Env):
    raw = report(1).replace(b"From: Reporter 1 <reporter1@example.net>",
                            b"From: reporter1@example.net")
    case_id = ingest(env, raw)
    text = disclose(env, case_id)
    assert "As you asked" not in text
    assert "we do not know your name" in text


def test_default_credit_is_checked(tmp_path: Path):
    path = write_config(tmp_path)
    with_project_key(path, 'default_credit = "everyone"')
    done = cli(path, "check-config")
    assert done.returncode == 2
    assert 'project.default_credit: \'everyone\' is not allowed, expected one of "name", ' \
           '"anonymous"' in done.stderr


# -- 2. empty text ---------------------------------------------------------------------------

def run_on_terminal(config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The command with a terminal as standard input, as an operator types it."""
    controller, terminal = pty.openpty()
    try:
        done = subprocess.run([sys.executable, "-m", "seclistd", "--config", str(config_path),
                               *args], stdin=terminal, capture_output=True, text=True,
                              timeout=120, env=MACHINE_ENV)
    finally:
        os.close(terminal)
        os.close(controller)
    return done


def test_actions_that_take_text_refuse_empty_text(env: Env):
    case_id = ingest(env, report(1))
    events = len(json.loads(ok(env, "cases", "show", case_id, "--json").stdout)["events"])
    attempts = [
        cli(env.path, "cases", "comment", case_id, input=b""),
        cli(env.path, "cases", "comment", case_id, input=b"  \n\t\n"),
        cli(env.path, "cases", "comment", case_id, "--message", "   "),
        cli(env.path, "cases", "reply", case_id, input=b"\n"),
        cli(env.path, "cases", "ack", case_id, "-m", ""),
        run_on_terminal(env.path, "cases", "comment", case_id),
    ]
    for done in attempts:
        assert done.returncode == 1, done.stderr
        assert "needs a text" in one_line(done)
    assert "standard input is a terminal" in attempts[-1].stderr
    after = json.loads(ok(env, "cases", "show", case_id, "--json").stdout)
    assert len(after["events"]) == events and after["state"] == "new"

    # Where the text is an optional note, no text is fine, from a terminal too.
    ok(env, "cases", "ack", case_id, "-m", "Thanks, we are on it.")
    assert run_on_terminal(env.path, "cases", "confirm", case_id).returncode == 0
    ok(env, "cases", "comment", case_id, input=b"internal: reproduced\n")
    assert json.loads(ok(env, "cases", "show", case_id, "--json").stdout)["state"] == "confirmed"


def test_ingest_refuses_empty_input_and_stores_nothing(env: Env, tmp_path: Path):
    empty = tmp_path / "empty.eml"
    empty.write_bytes(b"")
    for done in (cli(env.path, "ingest", "-", input=b""),
                 cli(env.path, "ingest", "-", input=b"\r\n \n"),
                 cli(env.path, "ingest", str(empty))):
        assert done.returncode == 1, done.stderr
        assert "it is empty, expected a file with one raw message" in one_line(done)
    status = json.loads(ok(env, "status", "--json").stdout)
    assert status["messages_total"] == 0 and status["quarantined"] == 0
    assert json.loads(ok(env, "outbox", "list", "--json").stdout) == []  # nobody was told


# -- 3. never a traceback --------------------------------------------------------------------

def test_a_second_daemon_on_the_same_port_says_so_in_one_line(tmp_path: Path):
    port = free_port()
    env = make_env(tmp_path, listener_port=port)
    log = tmp_path / "first.log"
    first = start_daemon(env.path, log, wait=True)
    try:
        second = cli(env.path, "run", timeout=60)
        assert second.returncode == 1  # the config is valid: a failed operation, not usage
        line = one_line(second)
        assert f"127.0.0.1:{port} is in use: is another seclistd running?" in line
        assert first.poll() is None  # the first one runs on
    finally:
        first.terminate()
        assert first.wait(timeout=60) == 0


def test_a_closed_pipe_ends_quietly(env: Env):
    case_id = ingest(env, report(1, body="A long report.\n" * 3000))
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before a byte is written (`| head` that quit)
    try:
        done = subprocess.run([sys.executable, "-m", "seclistd", "--config", str(env.path),
                               "cases", "show", case_id], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120,
                              env=MACHINE_ENV)
    finally:
        os.close(write_end)
    assert done.stderr == "" and done.returncode == 1

    piped = subprocess.run(f"{sys.executable} -m seclistd --config {env.path} cases show "
                           f"{case_id} | head -1", shell=True, capture_output=True, text=True,
                           timeout=120, env=MACHINE_ENV)
    assert piped.stderr == "" and piped.stdout.startswith("id: ")


SECRET = "secret report text from a message"


@pytest.fixture
def root_logging() -> Iterator[None]:
    """main() sets up the root logger; put it back for the other tests."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_the_unexpected_is_one_line_naming_the_class_not_the_content(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        root_logging: None):
    from seclistd import views
    from seclistd.cli import main

    env = make_env(tmp_path)

    def broken(*_args: object) -> None:
        raise RuntimeError(SECRET)

    monkeypatch.setattr(views, "status", broken)
    assert main(["--config", str(env.path), "status"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "builtins.RuntimeError" in err and SECRET not in err

    monkeypatch.setenv("SECLISTD_LOG_LEVEL", "DEBUG")  # where it happened, still no content
    assert main(["--config", str(env.path), "status"]) == 1
    err = capsys.readouterr().err
    assert "in broken" in err and SECRET not in err


def test_a_bad_log_level_is_a_usage_error(env: Env):
    done = cli(env.path, "status", env={"SECLISTD_LOG_LEVEL": "chatty"})
    assert done.returncode == 2
    assert "SECLISTD_LOG_LEVEL='chatty' is not a log level" in one_line(done)


# -- 4. --json and --version -----------------------------------------------------------------

def test_check_config_and_migrate_speak_json_and_there_is_a_version(tmp_path: Path):
    path = write_config(tmp_path)
    checked = cli(path, "check-config", "--json")
    assert checked.returncode == 0
    assert json.loads(checked.stdout) == {"config": str(path), "ok": True, "problems": []}

    first = cli(path, "--json", "migrate")
    assert first.returncode == 0, first.stderr
    doc = json.loads(first.stdout)
    assert doc["from_revision"] is None and doc["changed"] is True
    assert doc["revision"] == db.REVISIONS[-1] and doc["database"].endswith("seclistd.db")
    again = json.loads(cli(path, "--json", "migrate").stdout)
    assert again["from_revision"] == db.REVISIONS[-1] and again["changed"] is False

    bad = tmp_path / "bad.toml"
    bad.write_text('[project]\nname = "X"\nsecurity_address = "nope"\n')
    failed = cli(bad, "check-config", "--json")
    assert failed.returncode == 2
    report_doc = json.loads(failed.stdout)
    assert report_doc["ok"] is False
    assert any("project.security_address" in p for p in report_doc["problems"])

    version = cli(path, "--version")
    assert version.returncode == 0
    assert version.stdout.strip() == f"seclistd {metadata.version('seclistd')}"


# -- 5. relative paths, and read-only commands create nothing --------------------------------

RELATIVE = """
[project]
name = "Example"
security_address = "security@example.org"

[database]
url = "sqlite:///data/seclistd.db"

[imap]
enabled = false

[relay]
transport = "maildir"
maildir = "out"

[gnupg]
home = "keys"

[templates]
dir = "tpl"
"""


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch):
    etc, elsewhere = tmp_path / "etc", tmp_path / "elsewhere"
    etc.mkdir()
    elsewhere.mkdir()
    path = etc / "seclistd.toml"
    path.write_text(RELATIVE)
    monkeypatch.chdir(elsewhere)

    read_only = [("status",), ("cases", "list"), ("cases", "show", "SEC-2000-0001"),
                 ("outbox", "list"), ("quarantine", "list"), ("quarantine", "show", "1"),
                 ("check-config",)]
    for args in read_only:
        done = cli(path, *args)
        if args[0] == "check-config":
            assert done.returncode == 0, done.stderr
            continue
        assert done.returncode == 2, (args, done.stderr)
        assert one_line(done) == (f"seclistd: no database at {etc}/data/seclistd.db: run "
                                  "`seclistd migrate` (with this config) to create it, or "
                                  "check database.url")
    assert not (etc / "data").exists() and not (elsewhere / "data").exists()
    assert not (etc / "out").exists() and not (elsewhere / "out").exists()
    # doctor reports the missing database without creating it (a copy of the config, as
    # doctor's relay check makes the maildir's directory).
    other = tmp_path / "other"
    other.mkdir()
    (other / "seclistd.toml").write_text(RELATIVE)
    assert cli(other / "seclistd.toml", "doctor").returncode == 1
    assert not (other / "data").exists() and not (elsewhere / "data").exists()

    ok_migrate = cli(path, "migrate")
    assert ok_migrate.returncode == 0, ok_migrate.stderr
    assert (etc / "data" / "seclistd.db").exists()
    assert cli(path, "ingest", "-", input=report(1)).returncode == 0
    deliver(path)
    assert list((etc / "out" / "new").iterdir())  # the receipt, in the config's maildir
    assert not (elsewhere / "out").exists() and not (elsewhere / "data").exists()
    assert json.loads(cli(path, "status", "--json").stdout)["messages_total"] == 1


def test_settings_hold_absolute_paths_and_secrets_look_in_credentials_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "relay-password").write_text("beside the config\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    text = RELATIVE.replace('maildir = "out"', 'maildir = "out"\npassword_file = "relay-password"')
    path = tmp_path / "seclistd.toml"
    path.write_text(text)
    monkeypatch.chdir("/")
    settings = config.load(str(path))
    assert settings.database.url == f"sqlite:///{tmp_path}/data/seclistd.db"
    assert settings.relay.maildir == str(tmp_path / "out")
    assert settings.gnupg.home == str(tmp_path / "keys")
    assert settings.templates.dir == str(tmp_path / "tpl")
    assert settings.relay.password == "beside the config"
    (creds / "relay-password").write_text("from systemd\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert config.load(str(path)).relay.password == "from systemd"

    for url in ("sqlite:////abs/x.db", "sqlite://", "sqlite:///:memory:",
                "postgresql://u@h/db"):
        assert config.sqlite_url_in(tmp_path, url) == url
    assert config.sqlite_url_in(tmp_path, "sqlite:///../v/x.db?timeout=3") == (
        f"sqlite:///{tmp_path.parent}/v/x.db?timeout=3")


def test_the_dev_config_keeps_var_at_the_top_of_the_checkout():
    settings = config.load(str(ROOT / "config" / "seclistd.dev.toml"))
    assert settings.database.url == f"sqlite:///{ROOT}/var/seclistd.db"
    assert settings.relay.maildir == str(ROOT / "var" / "outgoing")
    readme = (ROOT / "README.md").read_text()
    assert "`var/seclistd.db`" in readme and "ls var/outgoing/new/" in readme


# -- 6. handlers outside the team ------------------------------------------------------------

def make_key(home: Home, name: str, email: str) -> str:
    """A key made in 2000, so whatever clock a command runs under, it is not in the future."""
    result = home.gpg.gen_key(home.gpg.gen_key_input(
        key_type="EDDSA", key_curve="ed25519", subkey_type="ECDH", subkey_curve="cv25519",
        name_real=name, name_email=email, no_protection=True, expire_date="0",
        creation_date="20000101T000000"))
    assert result.fingerprint, result.stderr
    return str(result.fingerprint)


def test_any_address_can_be_the_handler_its_mail_encrypted_or_held(tmp_path: Path,
                                                                     sink: Sink):
    gnupg, bob_home, carol_home = new_home(), new_home(), new_home()
    try:
        env = make_env(tmp_path, relay_port=sink.port, gnupg_home=gnupg.path)
        bob = "bob@maintainers.example"
        bob_fpr = make_key(bob_home, "Bob Maintainer", bob)
        gnupg.gpg.import_keys(bob_home.export(bob_fpr))  # the operator imported Bob's key
        first, second = ingest(env, report(1)), ingest(env, report(2))

        bad = cli(env.path, "cases", "assign", first, "bob at maintainers")
        assert bad.returncode == 1 and "is not a mail address" in one_line(bad)

        assigned = ok(env, "cases", "assign", first, bob)
        assert "not on the security team" in assigned.stdout and bob_fpr in assigned.stdout
        ok(env, "cases", "assign", second, "carol@elsewhere.example")
        ok(env, "cases", "comment", first, "-m", "internal")
        shown = json.loads(ok(env, "cases", "show", second, "--json").stdout)
        assign_event = [e for e in shown["events"] if e["action"] == "assign"][0]
        assert "not on the security team" in assign_event["detail"]
        assert "held" in assign_event["detail"]
        member = ingest(env, report(3))
        ok(env, "cases", "assign", member, "alice@example.org")
        shown = json.loads(ok(env, "cases", "show", member, "--json").stdout)
        assert "a member of the security team" in shown["events"][-1]["detail"]

        # The reporter writes again: the forward goes to the handler, not to the team.
        reply = report(4, sender="reporter1@example.net", subject=f"Re: [{first}] more")
        assert cli(env.path, "ingest", "-", input=reply).returncode == 0

        deliver(env.path)
        to_bob = sink.to(bob)
        assert len(to_bob) == 2  # the assignment and the reporter's reply
        for mail in to_bob:
            assert mail.message.get_content_type() == "multipart/encrypted"
            armored = mail.message.get_payload()[1].get_payload(decode=True)
            readable, clear = bob_home.decrypt(armored)
            assert readable
            assert first.encode() in clear
        assert not sink.to("carol@elsewhere.example")
        [held] = outbox(env, second, "assigned")
        assert held.status == "held" and held.to_addr == "carol@elsewhere.example"

        # The operator imports Carol's key and retries: it goes out encrypted to her, and
        # her later mail uses the key pinned on the case.
        carol_fpr = make_key(carol_home, "Carol", "carol@elsewhere.example")
        gnupg.gpg.import_keys(carol_home.export(carol_fpr))
        ok(env, "outbox", "retry", str(held.id))
        deliver(env.path)
        [to_carol] = sink.to("carol@elsewhere.example")
        assert carol_home.decrypt(to_carol.message.get_payload()[1].get_payload(decode=True))[0]
        with env.factory() as session:
            assert session.get(Case, second).handler_key == carol_fpr
    finally:
        for home in (gnupg, bob_home, carol_home):
            home.close()


# -- 7. help -------------------------------------------------------------------------------

def all_parsers(parser: argparse.ArgumentParser, name: str = "seclistd"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child_name, child in action.choices.items():
                yield from all_parsers(child, f"{name} {child_name}")


def test_every_command_describes_itself_and_lists_the_values_it_takes(env: Env):
    for name, parser in all_parsers(build_parser()):
        assert parser.description, f"`{name} --help` has no description"

    listed = ok(env, "cases", "list", "--help").stdout
    for state in ("new", "acknowledged", "confirmed", "embargoed", "disclosed", "closed"):
        assert state in listed
    listed = ok(env, "outbox", "list", "--help").stdout
    for status in ("pending", "sent", "failed", "held"):
        assert status in listed
    top = ok(env, "--help").stdout
    assert "SECLISTD_LOG_LEVEL" in top and "SECLISTD_CONFIG" in top
    assert "SECLISTD_LOG_LEVEL" in (ROOT / "README.md").read_text()
    for group in ("cases", "outbox", "quarantine", "keys", "members"):
        text = ok(env, group, "--help").stdout
        assert text.split("\n\n")[1].strip(), f"`{group} --help` has no description"



def test_strangers_words_reach_the_terminal_escaped(env: Env):
    hostile = ("\x1b]0;pwned\x07\x1b[31mred\x1b[0m and \u202eevil").encode()
    case_id = ingest(env, report(1, subject="esc \x1b[2J", body=hostile.decode()))
    shown = ok(env, "cases", "show", case_id).stdout
    listed = ok(env, "cases", "list").stdout
    for text in (shown, listed):
        assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    assert "\\x1b[31mred" in shown and "\\u202e" in shown
    # --json keeps the exact text (it is data, not a terminal's input).
    doc = json.loads(ok(env, "--json", "cases", "show", case_id).stdout)
    assert "\x1b[31mred" in doc["messages"][0]["text"]


def test_output_that_cannot_be_written_is_one_line(env: Env):
    case_id = ingest(env, report(1))
    closed = subprocess.run(f"{sys.executable} -m seclistd --config {env.path} cases show "
                            f"{case_id} >&-", shell=True, capture_output=True, text=True,
                            timeout=120, env=MACHINE_ENV)
    assert closed.returncode == 0 and closed.stderr == ""
    full = subprocess.run(f"{sys.executable} -m seclistd --config {env.path} cases show "
                          f"{case_id} > /dev/full", shell=True, capture_output=True, text=True,
                          timeout=120, env=MACHINE_ENV)
    assert full.returncode == 1
    assert one_line(full).startswith("seclistd: cannot write the output (No space left")


def test_ids_too_large_and_read_only_commands_that_would_create(env: Env, tmp_path: Path):
    for args in (("quarantine", "show", "9" * 23), ("outbox", "retry", "9" * 23)):
        done = cli(env.path, *args)
        assert done.returncode == 2 and "is not an ID" in one_line(done), args
    home = Path(env.settings.gnupg.home)
    assert not home.exists()
    for args in (("keys", "list"), ("keys", "export")):
        done = cli(env.path, *args)
        assert done.returncode == 1 and "`seclistd keys generate` creates it" in one_line(done)
    assert not home.exists()  # a reading command made no GnuPG home
    (tmp_path / "fresh").mkdir()
    missing = write_config(tmp_path / "fresh")
    doctor = json.loads(cli(missing, "--json", "doctor").stdout)
    database = next(r for r in doctor if r["name"] == "database")
    assert database["status"] == "fail" and "run `seclistd migrate`" in database["fix"]
    assert not (tmp_path / "fresh" / "seclistd.db").exists()


def test_ingest_names_the_join_request_a_mail_opened(tmp_path: Path, sink: Sink):
    """`ingest` of a join request says which request it opened, not 'on case None'."""
    from tests.components import TEST_CLOCK, write_config

    config = write_config(tmp_path, relay_port=sink.port, extra=(
        '[[lists]]\nname = "distributors"\naddress = "distributors@example.org"\n'
        'criteria = "oci"\n'))
    assert cli(config, "migrate").returncode == 0
    join = Path(__file__).parent / "data" / "join_oci.eml"
    done = cli(config, "ingest", str(join))
    assert done.returncode == 0, done.stderr
    year = TEST_CLOCK.now().year
    assert done.stdout.strip() == f"{join}: new join request JOIN-{year}-0001"
