"""The command line as an operator meets it: the contract's JSON fields, quarantine
list/show/release, unknown IDs and bad arguments with one clear line and the right code."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from tests.components import CLOCK, Sink, case_id, cli, report
from tests.conftest import Env, make_env

CASE_FIELDS = {"id", "state", "resolution", "subject", "reporter", "handler", "received_at",
               "ack_due", "acknowledged_at", "embargo_until"}


def test_ingest_stdin_then_list_and_show_with_contract_fields(env: Env):
    done = cli(env.path, "ingest", "-", input=report(1))
    assert done.returncode == 0 and f"new case {case_id(1)}" in done.stdout
    listed = json.loads(cli(env.path, "cases", "list", "--json").stdout)
    assert [c["id"] for c in listed] == [case_id(1)]
    assert set(listed[0]) == CASE_FIELDS
    assert json.loads(cli(env.path, "cases", "list", "--state", "closed", "--json").stdout) == []

    shown = json.loads(cli(env.path, "cases", "show", case_id(1), "--json").stdout)
    assert set(shown) >= CASE_FIELDS | {"missing_information", "messages", "events",
                                        "announcement"}
    assert set(shown["announcement"]) == {"until", "recipients"}
    for message in shown["messages"]:
        assert {"direction", "from", "to", "subject", "at", "text"} <= set(message)
    for event in shown["events"]:
        assert set(event) == {"at", "actor", "action", "from_state", "to_state", "detail"}
    # ISO 8601 with the offset the project's zone has at the CLI's clock.
    offset = CLOCK.astimezone(env.settings.project.tz).isoformat()[-6:]
    assert dt.datetime.fromisoformat(shown["received_at"]).utcoffset() == \
        CLOCK.astimezone(env.settings.project.tz).utcoffset()
    assert shown["received_at"].endswith(offset)
    text = cli(env.path, "cases", "show", case_id(1))
    assert "buffer overflow" in text.stdout


def test_status_fields(env: Env):
    cli(env.path, "ingest", "-", input=report(1))
    cli(env.path, "ingest", "-", input=b"garbage\r\n")
    doc = json.loads(cli(env.path, "status", "--json").stdout)
    assert set(doc) >= {"messages_total", "quarantined", "cases_by_state", "outbox_by_status",
                        "sla_at_risk", "last_imap_pass", "sweep_failures"}  # + test_status.py
    assert doc["sweep_failures"] == []
    assert doc["messages_total"] == 2 and doc["quarantined"] == 1
    assert doc["cases_by_state"]["new"] == 1
    assert doc["outbox_by_status"]["pending"] == 3  # receipt, team notice, quarantine notice


def test_quarantine_list_show_release(tmp_path: Path, sink: Sink):
    env = make_env(tmp_path, relay_port=sink.port, extra="[limits]\nmax_message_bytes = 2048\n")
    big = report(1, body="A long proof of concept. " * 200)
    assert cli(env.path, "ingest", "-", input=big).returncode == 0
    [row] = json.loads(cli(env.path, "quarantine", "list", "--json").stdout)
    assert "over the limit of 2048" in row["reason"]
    shown = cli(env.path, "quarantine", "show", str(row["id"]))
    assert "limits.max_message_bytes" in shown.stdout and "proof of concept" in shown.stdout

    released = cli(env.path, "quarantine", "release", str(row["id"]))
    assert released.returncode == 0, released.stderr
    assert case_id(1) in released.stdout
    assert json.loads(cli(env.path, "quarantine", "list", "--json").stdout) == []
    again = cli(env.path, "quarantine", "release", str(row["id"]))
    assert again.returncode == 1 and "no quarantined message" in again.stderr

    cli(env.path, "ingest", "-", input=b"\x01\x02 not mail at all")
    [junk] = json.loads(cli(env.path, "quarantine", "list", "--json").stdout)
    still = cli(env.path, "quarantine", "release", str(junk["id"]))
    assert still.returncode == 1 and "still quarantined" in still.stderr


def test_operator_mistakes_get_one_line_and_the_documented_code(env: Env, tmp_path: Path):
    checks = [
        (("cases", "show", case_id(42)), 1, f"no case {case_id(42)}"),
        (("cases", "list", "--state", "open"), 2, "unknown state 'open'"),
        (("outbox", "retry", "77"), 1, "no outbox row 77"),
        (("outbox", "retry", "abc"), 2, "is not an ID"),
        (("quarantine", "show", "5"), 1, "no quarantined message 5"),
        (("cases", "frobnicate"), 2, "invalid choice"),
        (("ingest", str(tmp_path / "missing.eml")), 1, "cannot read it"),
    ]
    for args, code, text in checks:
        done = cli(env.path, *args)
        assert done.returncode == code, (args, done.stderr)
        assert text in done.stderr, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, (args, done.stderr)


def test_unmigrated_database_says_run_migrate(tmp_path: Path):
    from tests.components import write_config

    path = write_config(tmp_path)
    done = cli(path, "status")
    assert done.returncode == 2 and "run `seclistd migrate`" in done.stderr
    assert cli(path, "migrate").returncode == 0
    assert cli(path, "status").returncode == 0


def test_doctor_reports_each_check(tmp_path: Path, sink: Sink):
    env = make_env(tmp_path, relay_port=sink.port)
    done = cli(env.path, "doctor", "--json")
    results = {r["name"]: r for r in json.loads(done.stdout)}
    assert {results[n]["status"] for n in ("database", "relay", "imap")} == {"ok"}
    # No GnuPG home yet: the one command that makes the check pass.
    assert results["project_key"]["status"] == "fail"
    assert f"seclistd --config {env.path} keys generate" in results["project_key"]["fix"]
    assert done.returncode == 1
    sink.stop()
    down = json.loads(cli(env.path, "doctor", "--json").stdout)
    relay = next(r for r in down if r["name"] == "relay")
    assert relay["status"] == "fail" and "check relay.host" in relay["fix"]
