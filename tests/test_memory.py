"""A single 20 MB message is ingested into a case with a peak RSS under 250 MB, and the
stored bytes are exactly the received ones."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import select

from seclistd.mail.parse import elide_bulk
from seclistd.models import Message
from tests.components import TEST_CLOCK, case_id, faketime_env
from tests.conftest import Env

LIMIT_MB = 250


def big_report(path: Path) -> bytes:
    payload = base64.encodebytes(os.urandom(15 * 1024 * 1024)).replace(b"\n", b"\r\n")
    raw = (b"From: Big <big@example.net>\r\nTo: security@example.org\r\nSubject: big PoC\r\n"
           b"Message-ID: <big@example.net>\r\nMIME-Version: 1.0\r\n"
           b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n--B\r\n'
           b"Content-Type: text/plain\r\n\r\nSee the attached core dump.\r\n--B\r\n"
           b"Content-Type: application/octet-stream\r\n"
           b'Content-Disposition: attachment; filename="core.bin"\r\n'
           b"Content-Transfer-Encoding: base64\r\n\r\n" + payload + b"--B--\r\n")
    path.write_bytes(raw)
    return raw


def test_20mb_message_within_memory_bound(env: Env, tmp_path: Path):
    raw = big_report(tmp_path / "big.eml")
    assert len(raw) > 20_000_000
    wrapper = (
        "import resource, subprocess, sys\n"
        "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024\n"
        "print(peak); print(done.returncode); print(done.stdout + done.stderr)\n")
    out = subprocess.run(
        [sys.executable, "-c", wrapper, sys.executable, "-m", "seclistd", "--config",
         str(env.path), "--json", "ingest", str(tmp_path / "big.eml")],
        capture_output=True, text=True, check=True,
        env={**os.environ, **faketime_env(TEST_CLOCK.now())}).stdout.splitlines()
    peak_mb, code, result = int(out[0]), int(out[1]), "\n".join(out[2:])
    assert code == 0, result
    assert json.loads(result)[0]["case_id"] == case_id(1)
    assert peak_mb < LIMIT_MB, f"peak RSS {peak_mb} MB"
    with env.factory() as session:
        stored = session.scalar(select(Message))
        assert stored.raw == raw and "attached core dump" in stored.text


def test_elide_bulk_keeps_text_and_cuts_only_long_base64_runs():
    short = b"Subject: x\r\n\r\n" + b"QUFB" * 19 + b"\r\n" + b"plain text\r\n"
    assert elide_bulk(short) == short
    run = (b"A" * 76 + b"\r\n") * 2000
    assert elide_bulk(b"head\r\n\r\n" + run + b"--B--\r\n") == b"head\r\n\r\n--B--\r\n"
