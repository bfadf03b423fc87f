"""Benchmark: `cases list --state new --json` and one SLA sweep over 50,000 cases.

Fills a fresh SQLite database (through the migrations) with N cases in a realistic spread
of states (most closed, a few percent waiting for an answer), `--due` of them with an SLA
step due now. Times, each the median of --repeat runs:
- `seclistd cases list --state new --json` as a fresh process (what an operator waits for),
  beside a bare baseline: a Python process doing the same SELECT with sqlite3 and json.dumps;
- one SLA sweep in-process (`reminders.sweep`, its transaction and commit included).

    .venv/bin/python bench/cases.py [--n 50000] [--due 200] [--new-share 0.02]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import insert  # noqa: E402

from bench.timing import timed  # noqa: E402
from seclistd import config, db  # noqa: E402
from seclistd.models import Case  # noqa: E402
from seclistd.workflows import reminders  # noqa: E402
from tests.components import write_config  # noqa: E402

BARE = r'''
import json, sqlite3, sys
conn = sqlite3.connect(sys.argv[1])
rows = conn.execute("SELECT id, state, resolution, subject, reporter, handler, received_at, "
                    "ack_due, acknowledged_at, embargo_until FROM cases WHERE state = 'new' "
                    "ORDER BY received_at, id").fetchall()
keys = ("id", "state", "resolution", "subject", "reporter", "handler", "received_at",
        "ack_due", "acknowledged_at", "embargo_until")
json.dump([dict(zip(keys, r)) for r in rows], sys.stdout, indent=2)
'''


def fill(factory, n: int, new_share: float, due: int, now: dt.datetime) -> tuple[int, int]:
    """Insert the cases; returns (how many are new, how many have an SLA step due)."""
    rng = random.Random(7)
    shares = [("new", new_share), ("acknowledged", 0.04), ("confirmed", 0.03),
              ("embargoed", 0.01), ("disclosed", 0.03)]
    rows, new_count = [], 0
    for i in range(n):
        received = now - dt.timedelta(days=rng.uniform(0, 3 * 365))
        r, state = rng.random(), "closed"
        for name, share in shares:
            if r < share:
                state = name
                break
            r -= share
        open_ = state not in ("disclosed", "closed")
        new_count += state == "new"
        rows.append({
            "id": f"SEC-{received.year}-{i + 1:05d}", "state": state,
            "resolution": "fixed" if state == "closed" else None,
            "subject": f"Report {i}: a problem in component {i % 40}",
            "reporter": f"reporter{i % 5000}@example.net", "received_at": received,
            "ack_due": received + dt.timedelta(days=5), "missing_information": [],
            "encrypted": False, "ack_stage": 0, "update_reminders": 0,
            "last_reporter_contact_at": received,
            "next_sla_at": (now + dt.timedelta(days=rng.uniform(1, 14))) if open_ else None})
    # `due` open cases have an SLA step due now.
    open_rows = [r for r in rows if r["next_sla_at"] is not None and r["state"] != "new"]
    due_rows = rng.sample(open_rows, min(due, len(open_rows)))
    for r in due_rows:
        r["next_sla_at"] = now - dt.timedelta(minutes=1)
        r["last_reporter_contact_at"] = now - dt.timedelta(days=20)
    with db.transaction(factory) as session:
        for start in range(0, n, 5000):
            session.execute(insert(Case), rows[start:start + 5000])
    return new_count, len(due_rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--due", type=int, default=200)
    parser.add_argument("--new-share", type=float, default=0.02)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="cases"))
    path = write_config(work, team=["alice@example.org"])
    settings = config.load(str(path))
    db.migrate(settings.database.url)
    engine = db.make_engine(settings.database.url)
    factory = db.session_factory(engine)
    now = dt.datetime.now(dt.UTC)
    new_count, due_count = fill(factory, args.n, args.new_share, args.due, now)
    db_file = str(work / "seclistd.db")

    def seclistd_list() -> None:
        out = subprocess.run([sys.executable, "-m", "seclistd", "--config", str(path), "--json",
                              "cases", "list", "--state", "new"], capture_output=True,
                             check=True).stdout
        assert len(json.loads(out)) == new_count

    def bare_list() -> None:
        out = subprocess.run([sys.executable, "-c", BARE, db_file], capture_output=True,
                             check=True).stdout
        assert len(json.loads(out)) == new_count

    ours = statistics.median(timed(seclistd_list) for _ in range(args.repeat))
    bare = statistics.median(timed(bare_list) for _ in range(args.repeat))

    handled: list[int] = []

    def one_sweep() -> None:
        with db.transaction(factory) as session:
            handled.append(reminders.sweep(session, now, settings))

    sweep_due = timed(one_sweep)
    sweep_idle = statistics.median(timed(one_sweep) for _ in range(args.repeat))
    assert handled[0] == min(due_count, reminders.BATCH) and handled[1:] == [0] * args.repeat
    result = {"cases": args.n, "new": new_count,
              "cases_list_new_json_s": round(ours, 3), "bare_list_s": round(bare, 3),
              "ratio": round(ours / bare, 2),
              "sla_sweep_due_s": round(sweep_due, 3), "due_cases": handled[0],
              "sla_sweep_idle_s": round(sweep_idle, 4)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
