"""Benchmark: hostile messages of growing size through the real pipeline.

Every kind of ``tests/hostile_inputs.py`` (backtracking bait, parser bait, header bait and an
ordinary report as the baseline) is built at each size and handed to ``accept()`` (store,
limits, parse, OpenPGP analysis, classification, case or quarantine, commit) on a fresh
SQLite database with the default limits. For each input it reports the seconds per MB of
input and how the message ended; per kind, how seconds per MB grew from the smallest size
to the largest (linear work keeps it flat: a quadratic pattern multiplies it by the size
ratio, 64 from 32 KB to 2 MB). Exits 1 when any kind grows more than ``--max-growth``.

    .venv/bin/python bench/hostile.py [--sizes 32K,128K,512K,2M] [--kinds a,b] [--repeat 1]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.timing import timed  # noqa: E402 - after the path is set
from seclistd import config, db  # noqa: E402
from seclistd.intake.store import Outcome, accept  # noqa: E402
from tests.components import report, write_config  # noqa: E402
from tests.hostile_inputs import KINDS, make  # noqa: E402

NOW = dt.datetime(2026, 11, 19, 15, 0, tzinfo=dt.UTC)
MB = 1024 * 1024


def size_of(text: str) -> int:
    units = {"K": 1024, "M": MB}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units \
        else int(text)


def label(size: int) -> str:
    return f"{size // MB} MB" if size >= MB else f"{size // 1024} KB"


def ending(outcome: Outcome) -> str:
    if outcome.status == "quarantined":
        return f"quarantined: {(outcome.reason or '')[:60]}"
    return f"{outcome.route} {outcome.case_id or ''}".strip()


def run(kinds: list[str], sizes: list[int], repeat: int, workdir: Path) -> list[dict]:
    settings = config.load(str(write_config(workdir)))
    db.migrate(settings.database.url)
    factory = db.session_factory(db.make_engine(settings.database.url))
    # One ordinary report first, untimed: the one-time costs (gpg --version, templates,
    # the holiday calendar) belong to no input.
    accept(factory, settings, report(0), source="ingest", now=NOW)
    rows = []
    for kind in kinds:
        for size in sizes:
            raw = make(kind, size)
            times, outcome = [], None
            for r in range(repeat):
                # A different first line each time, so that no repeat is a duplicate.
                data = f"X-Repeat: {r}\r\n".encode() + raw

                def once(data: bytes = data) -> None:
                    nonlocal outcome
                    outcome = accept(factory, settings, data, source="ingest", now=NOW)
                times.append(timed(once))
            seconds = statistics.median(times)
            assert outcome is not None
            rows.append({"kind": kind, "size": size, "bytes": len(raw), "seconds": seconds,
                         "s_per_mb": seconds / (len(raw) / MB), "ending": ending(outcome)})
            print(f"{kind:24s} {label(size):>7s} {seconds:8.3f} s {rows[-1]['s_per_mb']:8.3f} "
                  f"s/MB  {rows[-1]['ending']}", file=sys.stderr, flush=True)
    return rows


def growth(rows: list[dict]) -> dict[str, float]:
    """Per kind: s/MB at the largest size over s/MB at the smallest (1.0 = linear)."""
    out = {}
    for kind in dict.fromkeys(r["kind"] for r in rows):
        mine = sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["size"])
        out[kind] = mine[-1]["s_per_mb"] / max(mine[0]["s_per_mb"], 1e-9)
    return out


def table(rows: list[dict], sizes: list[int], grown: dict[str, float]) -> str:
    head = "| kind | " + " | ".join(label(s) for s in sizes) + " | growth | ends in |"
    lines = [head, "| --- |" + " --- |" * (len(sizes) + 2)]
    for kind, g in grown.items():
        mine = {r["size"]: r for r in rows if r["kind"] == kind}
        cells = " | ".join(f"{mine[s]['s_per_mb']:.3f}" for s in sizes)
        endings = sorted({mine[s]["ending"].split(":")[0].split(" ")[0] for s in sizes})
        lines.append(f"| {kind} | {cells} | {g:.2f}× | {', '.join(endings)} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="32K,128K,512K,2M")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--max-growth", type=float, default=3.0,
                        help="fail when s/MB at the largest size exceeds this many times "
                             "its value at the smallest")
    args = parser.parse_args()
    sizes = sorted(size_of(s) for s in args.sizes.split(","))
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        print(f"unknown kind {unknown[0]}, expected one of {', '.join(KINDS)}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="hostile"))
    try:
        rows = run(kinds, sizes, args.repeat, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    grown = growth(rows)
    worst = max(rows, key=lambda r: r["s_per_mb"])
    print(table(rows, sizes, grown))
    print(json.dumps({"worst_s_per_mb": round(worst["s_per_mb"], 3),
                      "worst": f"{worst['kind']} at {label(worst['size'])}",
                      "worst_growth": round(max(grown.values()), 2),
                      "total_seconds": round(sum(r["seconds"] for r in rows), 1)}))
    return 0 if max(grown.values()) <= args.max_growth else 1


if __name__ == "__main__":
    sys.exit(main())
