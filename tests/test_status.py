"""`seclistd status`: the contract's counts plus the health an operator or a monitor needs —
daemons by heartbeat, the oldest waiting mail, the next deadline and embargo lift, the rows
that fail, join requests and members by state — as a table, as JSON and for Prometheus."""

from __future__ import annotations

import datetime as dt
import json
import re
import signal
from pathlib import Path

import pytest
from sqlalchemy import select

from seclistd import heartbeat
from seclistd.db import transaction
from seclistd.list_models import JoinRequest
from seclistd.models import Case, Event, Outbox
from seclistd.workflows import member_states
from tests.components import CLOCK, TEST_CLOCK, Sink, case_id, cli, report, start_daemon, wait_for
from tests.conftest import Env, make_env

T = CLOCK  # everything below happens at fixed times from here
AT = T + dt.timedelta(hours=2)  # when `status` is asked
CONTRACT = {"messages_total", "quarantined", "cases_by_state", "outbox_by_status",
            "sla_at_risk", "last_imap_pass", "sweep_failures"}
LISTS = '\n[[lists]]\nname = "distributors"\naddress = "distributors@example.org"\n' \
        'criteria = "kubernetes"\n'


@pytest.fixture
def busy(tmp_path: Path, sink: Sink) -> Env:
    """Three cases (one new with a failing SLA sweep, one embargoed for days, one whose
    embargo ended and whose disclosure failed twice), failed and held mail, three members
    (one suspended, one whose key check fails), a join request whose expiry fails, and the
    heartbeats of a running and of a dead daemon."""
    env = make_env(tmp_path, relay_port=sink.port, extra=LISTS)
    for i in (1, 2, 3):  # a second apart: each CLI child's clock starts at its `at`
        assert cli(env.path, "ingest", "-", input=report(i),
                   at=T + dt.timedelta(seconds=i - 1)).returncode == 0
    for email in ("a@vendor-a.example", "b@vendor-b.example", "c@vendor-c.example"):
        assert cli(env.path, "members", "add", email, "--organization", "Vendor",
                   at=T + dt.timedelta(seconds=10)).returncode == 0
    assert cli(env.path, "members", "suspend", "b@vendor-b.example", "--reason", "bounces",
               at=T + dt.timedelta(seconds=20)).returncode == 0
    with transaction(env.factory) as s:
        first = s.get(Case, case_id(1))
        first.sweep_error, first.sweep_failures = "DatabaseError in reminders.sweep", 1
        for n, until in ((2, T + dt.timedelta(days=3)), (3, T + dt.timedelta(hours=1))):
            case = s.get(Case, case_id(n))
            case.state, case.embargo_until = "embargoed", until
        for k in (1, 2):
            s.add(Event(case_id=case_id(3), at=T + dt.timedelta(minutes=60 + k), actor="seclistd",
                        action="disclose_failed", detail=f"no project key ({k})"))
        rows = s.scalars(select(Outbox).order_by(Outbox.id)).all()
        rows[-1].status, rows[-1].last_error = "failed", "550 5.1.1 no such user"
        rows[-2].status, rows[-2].last_error = "held", "no usable key for the member"
        member = member_states.find_member(s, "distributors", "c@vendor-c.example")
        member_states.record(s, member, actor="seclistd", action="key_failed", now=T,
                             detail="gpg timed out; tried again at the next run")
        s.add(JoinRequest(id="JOIN-2026-0001", list_name="distributors", state="submitted",
                          applicant="new@applicant.example", created_at=T,
                          last_activity_at=T))
        s.flush()
        from seclistd.workflows import requests
        requests.record(s, T, s.get(JoinRequest, "JOIN-2026-0001"), actor="seclistd",
                        action="sweep_failed", detail="OperationalError in requests.expire")
        heartbeat.beat(s, AT - dt.timedelta(seconds=10),
                       heartbeat.Identity("mail1.example.org", 4242, T), True)
        heartbeat.beat(s, AT - dt.timedelta(seconds=60),
                       heartbeat.Identity("mail2.example.org", 77, T - dt.timedelta(days=1)),
                       False)
    return env


SLACK = 10  # seconds: a child's clock starts at AT and runs on while it starts up


def later_by(value: float, expected: float) -> bool:
    """An age read at AT plus the child's start-up time."""
    return expected <= value <= expected + SLACK


def status_json(env: Env, **at: dt.datetime) -> dict:
    """`status --json` at ``at=`` (default: the test clock's now)."""
    done = cli(env.path, "status", "--json", **at)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_every_field_under_a_fixed_clock(busy: Env):
    doc = status_json(busy, at=AT)
    tz = busy.settings.project.tz
    local = lambda when: when.astimezone(tz).isoformat()  # noqa: E731
    assert set(doc) >= CONTRACT
    assert doc["cases_by_state"]["new"] == 1 and doc["cases_by_state"]["embargoed"] == 2
    assert doc["daemon_running"] is True
    ages = [d.pop("last_seen_age_seconds") for d in doc["daemons"]]
    assert later_by(ages[0], 10) and later_by(ages[1], 60)
    assert doc["daemons"] == [
        {"host": "mail1.example.org", "pid": 4242, "started_at": local(T),
         "last_seen": local(AT - dt.timedelta(seconds=10)), "running": True,
         "imap_intake": True},
        {"host": "mail2.example.org", "pid": 77, "started_at": local(T - dt.timedelta(days=1)),
         "last_seen": local(AT - dt.timedelta(seconds=60)), "running": False,
         "imap_intake": False}]
    oldest = doc["oldest_pending_outbox"]
    assert (oldest["id"], oldest["case_id"], oldest["kind"]) == (1, case_id(1), "receipt")
    assert later_by(oldest["age_seconds"], 7200 - SLACK)  # written as the ingest started
    with busy.factory() as s:
        ack_due = s.get(Case, case_id(1)).ack_due
    countdown = doc["next_sla_deadline"].pop("in_seconds")
    assert later_by(-countdown, -int((ack_due - AT).total_seconds()))
    assert doc["next_sla_deadline"] == {"case_id": case_id(1), "at": local(ack_due)}
    assert later_by(-doc["next_embargo_lift"].pop("in_seconds"), 3600)  # an hour overdue
    assert doc["next_embargo_lift"] == {"case_id": case_id(3),
                                        "at": local(T + dt.timedelta(hours=1))}
    failing = [(o["status"], o["error"]) for o in doc["outbox_failing"]]
    assert failing == [("failed", "550 5.1.1 no such user"),
                       ("held", "no usable key for the member")]
    assert doc["outbox_by_status"]["failed"] == 1 and doc["outbox_by_status"]["held"] == 1
    assert doc["sweep_failures"][0]["case_id"] == case_id(1)
    assert doc["disclosure_failures"] == [
        {"case_id": case_id(3), "failures": 2, "last_at": local(T + dt.timedelta(minutes=62)),
         "error": "no project key (2)"}]
    assert doc["member_sweep_failures"] == [
        {"member": "c@vendor-c.example", "list": "distributors", "sweep": "key",
         "at": local(T), "error": "gpg timed out; tried again at the next run"}]
    assert doc["request_sweep_failures"] == [
        {"request_id": "JOIN-2026-0001", "at": local(T),
         "error": "OperationalError in requests.expire"}]
    assert doc["requests_by_state"]["submitted"] == 1
    assert sum(doc["requests_by_state"].values()) == 1
    assert doc["members_by_state"] == {"active": 2, "suspended": 1, "removed": 0}


def test_the_table_is_for_people(busy: Env):
    done = cli(busy.path, "status", at=AT)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert not out.lstrip().startswith("{")
    assert re.search(r"^daemon +1 running$", out, re.M)
    # Times with weekday and zone; the embargo that ended says it is overdue.
    assert f"next embargo lift  {case_id(3)} Thu 2026-11-19 11:00 EST (1 h 0 min ago, " \
           "overdue)" in out
    assert re.search(rf"^oldest pending +#1 \({case_id(1)}\), waiting (2 h 0|1 h 59) min "
                     r"since Thu 2026-11-19 10:00 EST$", out, re.M)
    assert re.search(r"mail2\.example\.org +77 +stale", out)
    for text in ("550 5.1.1 no such user", "no project key (2)", "JOIN-2026-0001",
                 "c@vendor-c.example", "members            active 2, suspended 1, removed 0"):
        assert text in out, text


LABEL = r'[a-z_]+="(?:[^"\\\n]|\\.){0,200}"'
SAMPLE = re.compile(rf"^(seclistd_[a-z_]+)(\{{{LABEL}(?:,{LABEL}){{0,5}}\}})?"
                    r" (-?[0-9]+(?:\.[0-9]+)?)$")


def test_prometheus_exposition(busy: Env):
    done = cli(busy.path, "status", "--format", "prometheus", at=AT)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert text.endswith("\n")
    typed: dict[str, str] = {}
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split()[2]
            assert name.startswith("seclistd_") and name not in typed
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert kind == "gauge"
            typed[name] = kind
        else:
            match = SAMPLE.match(line)
            assert match, line
            assert match.group(1) in typed, f"{line}: no # TYPE before it"
            samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    assert samples["seclistd_daemon_up"] == 1
    assert samples["seclistd_daemons_running"] == 1
    assert later_by(
        samples['seclistd_daemon_heartbeat_age_seconds{host="mail2.example.org",pid="77"}'], 60)
    assert samples['seclistd_cases{state="embargoed"}'] == 2
    assert samples['seclistd_outbox_messages{status="held"}'] == 1
    assert samples['seclistd_sweep_failures{sweep="disclosure"}'] == 1
    assert samples['seclistd_sweep_failures{sweep="member_key"}'] == 1
    assert samples['seclistd_members{state="suspended"}'] == 1
    assert samples['seclistd_join_requests{state="submitted"}'] == 1
    assert later_by(-samples["seclistd_embargo_next_lift_seconds"], 3600)
    assert later_by(samples["seclistd_outbox_oldest_pending_age_seconds"], 7200 - SLACK)

    # The reference parser (what Prometheus' own client reads) agrees.
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["seclistd_daemon_up"].type == "gauge"
    assert {s.labels["state"]: s.value for s in families["seclistd_members"].samples} == {
        "active": 2, "suspended": 1, "removed": 0}

    # --json and --format prometheus at once: a usage error in one line.
    clash = cli(busy.path, "status", "--json", "--format", "prometheus", at=AT)
    assert clash.returncode == 2 and len(clash.stderr.strip().splitlines()) == 1


def test_a_running_daemon_shows_up_and_goes_stale_when_it_dies(env: Env, tmp_path: Path):
    log = tmp_path / "daemon.log"
    proc = start_daemon(env.path, log, wait=True)
    try:
        def running() -> dict | None:
            doc = status_json(env)
            mine = [d for d in doc["daemons"] if d["pid"] == proc.pid]
            return doc if mine and mine[0]["running"] else None

        doc = wait_for(lambda: running() if proc.poll() is None else None, timeout=30,
                       what="the daemon's heartbeat")
        assert doc["daemon_running"] is True
        prom = cli(env.path, "status", "--format", "prometheus").stdout
        assert "seclistd_daemon_up 1\n" in prom
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    # Killed: its heartbeat stays, but three intervals later it counts as not running.
    later = TEST_CLOCK.now() + 3 * dt.timedelta(seconds=heartbeat.INTERVAL) + \
        dt.timedelta(seconds=5)
    doc = status_json(env, at=later)
    [dead] = [d for d in doc["daemons"] if d["pid"] == proc.pid]
    assert dead["running"] is False and doc["daemon_running"] is False
    assert "seclistd_daemon_up 0\n" in cli(env.path, "status", "--format", "prometheus",
                                          at=later).stdout
    assert "NOT RUNNING" in cli(env.path, "status", at=later).stdout

    # A clean stop takes its heartbeat away at once.
    again = start_daemon(env.path, log, wait=True)
    wait_for(lambda: any(d["pid"] == again.pid for d in status_json(env)["daemons"]),
             timeout=30, what="the second daemon's heartbeat")
    again.send_signal(signal.SIGTERM)
    assert again.wait(timeout=60) == 0
    assert all(d["pid"] != again.pid for d in status_json(env)["daemons"])
