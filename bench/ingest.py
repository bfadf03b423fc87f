"""Benchmark: `seclistd run --once` against a bare pipeline, in the same run.

N reports (default 1000) are appended to a real Dovecot mailbox. The bare pipeline is what
any script would do: imapclient fetch, mail-parser parse, one smtplib reply per message.
seclistd does the real work: store raw bytes, parse, classify, open a case, write the
receipt to the outbox, commit (SQLite, synchronous=FULL, one transaction per message), move
the message in IMAP, then relay the receipts. Both run as fresh processes against the same
servers; an aiosmtpd sink runs in a third process. Each side runs --repeat times on a
freshly filled mailbox; the medians are compared.

    .venv/bin/python bench/ingest.py [--n 1000] [--repeat 3] [--team 0]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.components import (  # noqa: E402 - after the path is set
    Dovecot,
    free_port,
    report,
    start_dovecot,
    wait_port,
    write_config,
)

BARE = r'''
import sys, time, smtplib
from email.message import EmailMessage
import mailparser
from imapclient import IMAPClient, SocketTimeout
port, user, password, smtp_port = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
client = IMAPClient("127.0.0.1", port=port, ssl=False, timeout=SocketTimeout(5, 60))
client.login(user, password)
client.select_folder("INBOX")
uids = sorted(client.search("ALL"))
smtp = smtplib.SMTP("127.0.0.1", smtp_port)
for start in range(0, len(uids), 25):
    chunk = uids[start:start + 25]
    for uid, item in client.fetch(chunk, ["BODY.PEEK[]"]).items():
        mail = mailparser.parse_from_bytes(item[b"BODY[]"])
        reply = EmailMessage()
        reply["From"] = "security@example.org"
        sender = mail.from_[0][1]
        reply["To"] = sender
        reply["Subject"] = "Re: " + mail.subject
        reply["In-Reply-To"] = mail.message_id
        reply.set_content("We received your report.\n")
        smtp.send_message(reply, from_addr="security@example.org", to_addrs=[sender])
smtp.quit()
client.logout()
print(len(uids))
'''


def fill(dovecot: Dovecot, n: int) -> None:
    dovecot.append([report(i) for i in range(n)])


def run_bare(dovecot: Dovecot, sink_port: int) -> float:
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", BARE, str(dovecot.port), dovecot.user,
                          dovecot.password, str(sink_port)], capture_output=True, text=True,
                         check=True)
    elapsed = time.perf_counter() - started
    assert out.stdout.strip().isdigit(), out.stderr
    return elapsed


def run_seclistd(dovecot: Dovecot, sink_port: int, workdir: Path, team: int, n: int) -> float:
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    config = write_config(workdir, imap=dovecot, relay_port=sink_port,
                          team=[f"member{i}@example.org" for i in range(team)],
                          extra=f"[autoreply]\nmax_per_sender_per_day = {n}\n"
                                f"max_per_hour = {n}\nteam_digest_after = {n}\n")
    seclistd = [sys.executable, "-m", "seclistd", "--config", str(config)]
    subprocess.run([*seclistd, "migrate"], check=True, capture_output=True)
    started = time.perf_counter()
    subprocess.run([*seclistd, "run", "--once"], check=True, capture_output=True,
                   env={**os.environ, "SECLISTD_LOG_LEVEL": "WARNING"})
    elapsed = time.perf_counter() - started
    status = json.loads(subprocess.run([*seclistd, "--json", "status"], check=True,
                                       capture_output=True, text=True).stdout)
    assert status["cases_by_state"]["new"] == n, status
    assert status["outbox_by_status"]["sent"] == n * (1 + team), status
    assert dovecot.count("INBOX") == 0
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--team", type=int, default=0,
                        help="team members notified per case (0 = one mail per report, "
                             "as the bare pipeline)")
    args = parser.parse_args()

    sink_port = free_port()
    sink = subprocess.Popen([sys.executable, "-m", "aiosmtpd", "-n", "-l",
                             f"127.0.0.1:{sink_port}", "-c", "aiosmtpd.handlers.Sink"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = start_dovecot()
    workdir = Path(tempfile.mkdtemp(prefix="bench"))
    bare, ours = [], []
    try:
        wait_port(sink_port)
        for r in range(args.repeat):
            for side, times in (("bare", bare), ("seclistd", ours)):
                import dataclasses

                box = dataclasses.replace(server, user=f"{side}{r}@example.org")
                fill(box, args.n)
                if side == "bare":
                    times.append(run_bare(box, sink_port))
                else:
                    times.append(run_seclistd(box, sink_port, workdir / "run", args.team,
                                              args.n))
                print(f"run {r + 1} {side:9s} {times[-1]:6.2f} s", file=sys.stderr)
    finally:
        server.stop()
        sink.terminate()
        sink.wait()
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(server.base, ignore_errors=True)

    b, s = statistics.median(bare), statistics.median(ours)
    result = {"n": args.n, "team": args.team, "repeat": args.repeat,
              "bare_s": round(b, 3), "seclistd_s": round(s, 3), "ratio": round(s / b, 3),
              "bare_msg_per_s": round(args.n / b, 1), "seclistd_msg_per_s": round(args.n / s, 1)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
