"""Case actions from the command line: text from --message or stdin, one-line refusals with
the documented exit codes, and the SLA sweep of a real `run --once` under faketime."""

from __future__ import annotations

import datetime as dt
import json

from tests.components import TEST_CLOCK, Sink, case_id, cli, report
from tests.conftest import Env


def test_actions_from_the_command_line(env: Env, sink: Sink):
    cli(env.path, "ingest", "-", input=report(1))
    ack = cli(env.path, "cases", "ack", case_id(1), "--message", "Looking into it.")
    assert ack.returncode == 0 and "new -> acknowledged" in ack.stdout

    refused = cli(env.path, "cases", "disclose", case_id(1), "--message", "x")
    assert refused.returncode == 1
    assert refused.stderr.strip() == (f"seclistd: cannot disclose {case_id(1)}: it is "
                                      "acknowledged; allowed now: assign, confirm, reject, "
                                      "duplicate, reply, comment, close")
    bad = cli(env.path, "cases", "confirm", case_id(1), "--cvss", "CVSS:3.1/AV:Q")
    assert bad.returncode == 1 and "not a valid CVSS vector" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    when = cli(env.path, "cases", "embargo", case_id(1), "--until", "next tuesday")
    assert when.returncode == 2 and "is not an ISO 8601 time" in when.stderr

    assert cli(env.path, "cases", "reply", case_id(1),
               input=b"Text from standard input.\n").returncode == 0
    assert cli(env.path, "cases", "comment", case_id(1), "-m", "secret note").returncode == 0
    confirmed = cli(env.path, "--json", "cases", "confirm", case_id(1), "--versions",
                    "< 2.0", "--cvss", "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H")
    assert json.loads(confirmed.stdout)["to_state"] == "confirmed"

    assert cli(env.path, "run", "--once").returncode == 0
    texts = [r.message.get_body().get_content() for r in sink.to("reporter1@example.net")]
    assert any("Looking into it." in t for t in texts)
    assert any("Text from standard input." in t for t in texts)
    assert not any("secret note" in t for t in texts)
    shown = json.loads(cli(env.path, "--json", "cases", "show", case_id(1)).stdout)
    assert shown["severity"].startswith("CVSS:3.1/") and shown["affected_versions"] == "< 2.0"
    assert [e["action"] for e in shown["events"]][-3:] == ["reply", "comment", "confirm"]


def test_sla_sweep_of_run_once_under_faketime(env: Env, sink: Sink):
    cli(env.path, "ingest", "-", input=report(1))
    assert cli(env.path, "run", "--once").returncode == 0
    # Nine days on, the 3-business-day deadline has passed (it would from any start: the
    # worst case on the US calendar, Wednesday before Thanksgiving, is due 6.6 days later).
    later = cli(env.path, "run", "--once", at=TEST_CLOCK.now() + dt.timedelta(days=9))
    assert later.returncode == 0, later.stderr
    to_reporter = sink.to("reporter1@example.net")
    assert len(to_reporter) == 2 and to_reporter[1].message["Auto-Submitted"] == "auto-generated"
    assert "have not managed" in to_reporter[1].message.get_body().get_content()
    shown = json.loads(cli(env.path, "--json", "cases", "show", case_id(1)).stdout)
    assert shown["state"] == "acknowledged" and shown["acknowledged_at"]
    assert "fallback_ack" in [e["action"] for e in shown["events"]]
