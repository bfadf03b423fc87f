"""The `status` document (``seclistd.health.status``) for people and for Prometheus.

``text``: a compact table, times with weekday and zone, ages in words. ``prometheus``: the
text exposition format for node_exporter's textfile collector: ``# HELP`` and ``# TYPE``
before each family, every name prefixed ``seclistd_``, states as labels, ages and
countdowns in seconds, all gauges.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

from seclistd.cli.common import table


def when(value: str | None, tz: ZoneInfo) -> str:
    if value is None:
        return "-"
    return dt.datetime.fromisoformat(value).astimezone(tz).strftime("%a %Y-%m-%d %H:%M %Z")


def span(secs: int) -> str:
    """``secs`` in words: ``3 d 4 h``, ``2 h 5 min``, ``40 s``."""
    secs = abs(secs)
    days, rest = divmod(secs, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, sec = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min" if minutes else f"{sec} s"


def relative(secs: int) -> str:
    return f"in {span(secs)}" if secs >= 0 else f"{span(secs)} ago, overdue"


def counts(values: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in values.items()) or "-"


def text(doc: dict[str, Any], tz: ZoneInfo) -> str:
    running = [d for d in doc["daemons"] if d["running"]]
    rows: list[tuple[str, str]] = [
        ("daemon", f"{len(running)} running" if running else "NOT RUNNING (no heartbeat)"),
        ("last IMAP pass", when(doc["last_imap_pass"], tz)),
        ("messages", f"{doc['messages_total']} stored, {doc['quarantined']} quarantined"),
        ("cases", counts(doc["cases_by_state"])),
        ("outbox", counts(doc["outbox_by_status"])),
    ]
    oldest = doc["oldest_pending_outbox"]
    rows.append(("oldest pending", "-" if oldest is None else
                 f"#{oldest['id']} ({oldest['case_id'] or oldest['kind']}), waiting "
                 f"{span(oldest['age_seconds'])} since {when(oldest['created_at'], tz)}"))
    rows.append(("SLA at risk", f"{doc['sla_at_risk']} case(s) within 24 h"))
    for label, key in (("next SLA deadline", "next_sla_deadline"),
                       ("next embargo lift", "next_embargo_lift")):
        moment = doc[key]
        rows.append((label, "-" if moment is None else
                     f"{moment['case_id']} {when(moment['at'], tz)} "
                     f"({relative(moment['in_seconds'])})"))
    rows.append(("join requests", counts(doc["requests_by_state"])))
    rows.append(("members", counts(doc["members_by_state"])))
    width = max(len(label) for label, _ in rows)
    out = [f"{label.ljust(width)}  {value}" for label, value in rows]
    if doc["daemons"]:
        out += ["", table([{"host": d["host"], "pid": d["pid"],
                            "state": "running" if d["running"] else "stale",
                            "started": when(d["started_at"], tz),
                            "last_seen": f"{span(d['last_seen_age_seconds'])} ago",
                            "imap_intake": {True: "yes", False: "no"}.get(d["imap_intake"],
                                                                         "?")}
                           for d in doc["daemons"]],
                          ["host", "pid", "state", "started", "last_seen", "imap_intake"], "")]
    failing = [{"what": f"outbox #{o['id']} {o['status']}", "case": o["case_id"],
                "error": o["error"]} for o in doc["outbox_failing"]]
    failing += [{"what": "SLA sweep", "case": f["case_id"], "error": f["error"]}
                for f in doc["sweep_failures"]]
    failing += [{"what": f"disclosure x{f['failures']}", "case": f["case_id"],
                 "error": f["error"]} for f in doc["disclosure_failures"]]
    failing += [{"what": f"{f['sweep']} sweep", "case": f["member"], "error": f["error"]}
                for f in doc["member_sweep_failures"]]
    failing += [{"what": "request expiry", "case": f["request_id"], "error": f["error"]}
                for f in doc["request_sweep_failures"]]
    out += ["", table(failing, ["what", "case", "error"], "")] if failing else \
        ["", "failing: none"]
    return "\n".join(out)


# -- Prometheus ---------------------------------------------------------------------------

def _escape(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class Exposition:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, help_text: str,
               samples: list[tuple[dict[str, object], float]]) -> None:
        full = f"seclistd_{name}"
        self.lines += [f"# HELP {full} {help_text}", f"# TYPE {full} gauge"]
        for labels, value in samples:
            inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            self.lines.append(f"{full}{{{inner}}} {_number(value)}" if inner
                              else f"{full} {_number(value)}")


def prometheus(doc: dict[str, Any], now: dt.datetime) -> str:
    e = Exposition()
    daemons = doc["daemons"]
    e.family("daemon_up", "1 if a seclistd daemon wrote a heartbeat recently, else 0.",
             [({}, 1 if doc["daemon_running"] else 0)])
    e.family("daemons_running", "Daemons with a recent heartbeat.",
             [({}, sum(1 for d in daemons if d["running"]))])
    e.family("daemon_heartbeat_age_seconds", "Seconds since each daemon's last heartbeat.",
             [({"host": d["host"], "pid": d["pid"]}, d["last_seen_age_seconds"])
              for d in daemons])
    e.family("daemon_imap_intake", "1 if the daemon holds the IMAP intake lock.",
             [({"host": d["host"], "pid": d["pid"]}, 1 if d["imap_intake"] else 0)
              for d in daemons if d["imap_intake"] is not None])
    last = doc["last_imap_pass"]
    if last is not None:
        e.family("last_imap_pass_age_seconds", "Seconds since the last IMAP pass.",
                 [({}, max(0, int((now - dt.datetime.fromisoformat(last)).total_seconds())))])
    e.family("messages_stored", "Distinct messages stored, quarantined ones included.",
             [({}, doc["messages_total"])])
    e.family("messages_quarantined", "Messages in quarantine.", [({}, doc["quarantined"])])
    e.family("cases", "Cases by state.",
             [({"state": k}, v) for k, v in doc["cases_by_state"].items()])
    e.family("outbox_messages", "Outgoing mail by status.",
             [({"status": k}, v) for k, v in doc["outbox_by_status"].items()])
    oldest = doc["oldest_pending_outbox"]
    e.family("outbox_oldest_pending_age_seconds",
             "Age of the oldest outgoing mail not yet sent (0: none waiting).",
             [({}, oldest["age_seconds"] if oldest else 0)])
    e.family("sla_at_risk_cases", "New cases whose acknowledgment is due within 24 hours.",
             [({}, doc["sla_at_risk"])])
    for name, key, help_text in (
            ("sla_next_deadline_seconds", "next_sla_deadline",
             "Seconds until the next acknowledgment deadline (negative: overdue)."),
            ("embargo_next_lift_seconds", "next_embargo_lift",
             "Seconds until the next embargo ends (negative: disclosure overdue).")):
        if doc[key] is not None:
            e.family(name, help_text, [({}, doc[key]["in_seconds"])])
    e.family("sweep_failures", "Rows a sweep is failing on, by sweep.", [
        ({"sweep": "sla"}, len(doc["sweep_failures"])),
        ({"sweep": "disclosure"}, len(doc["disclosure_failures"])),
        ({"sweep": "member_bounce"},
         sum(1 for f in doc["member_sweep_failures"] if f["sweep"] == "bounce")),
        ({"sweep": "member_key"},
         sum(1 for f in doc["member_sweep_failures"] if f["sweep"] == "key")),
        ({"sweep": "request_expiry"}, len(doc["request_sweep_failures"]))])
    e.family("join_requests", "Join requests by state.",
             [({"state": k}, v) for k, v in doc["requests_by_state"].items()])
    e.family("members", "List members by state.",
             [({"state": k}, v) for k, v in doc["members_by_state"].items()])
    return "\n".join(e.lines) + "\n"
