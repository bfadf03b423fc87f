"""Benchmark: OpenPGP verify and decrypt throughput, seclistd's Keyring against bare gpg.

N signed and N encrypted messages are made with a throw-away reporter key. The bare
baseline runs `gpg --verify` / `gpg --decrypt` once per message as a subprocess, the least
any wrapper must do. seclistd runs `Keyring.verify_detached` (temp file for the signature,
python-gnupg, our status-line parsing) and `Keyring.decrypt` (with --max-output). Both
sequential, in the same run, on the same homes.

    .venv/bin/python bench/crypto.py [--n 200]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.timing import timed  # noqa: E402
from seclistd.config import GnupgSettings  # noqa: E402
from seclistd.crypto import Keyring  # noqa: E402
from tests.pgp import entity, new_home  # noqa: E402

MAX_DECRYPTED = 32 * 1024 * 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    args = parser.parse_args()

    project, reporter = new_home(), new_home()
    try:
        project_fpr = project.generate("Example security team", "security@example.org")
        reporter_fpr = reporter.generate("Rita", "rita@example.net")
        project.gpg.import_keys(reporter.export(reporter_fpr))
        reporter.gpg.import_keys(project.export(project_fpr))
        bodies = [entity(f"X-CASE: SEC-2026-{i:04d}\nX-ACK\n\nMessage {i}. " + "text " * 200)
                  for i in range(args.n)]
        signatures = [reporter.sign(b, reporter_fpr) for b in bodies]
        ciphertexts = [reporter.encrypt(b, project_fpr) for b in bodies]
        ring = Keyring(GnupgSettings(home=str(project.path)))
        work = Path(tempfile.mkdtemp(prefix="bc", dir="/tmp"))
        gpg = ["gpg", "--homedir", str(project.path), "--batch", "--no-random-seed-file"]

        def bare_verify() -> None:
            for i, (body, sig) in enumerate(zip(bodies, signatures, strict=True)):
                (work / f"s{i}").write_bytes(sig)
                subprocess.run([*gpg, "--verify", str(work / f"s{i}"), "-"], input=body,
                               capture_output=True, check=True)

        def ours_verify() -> None:
            for body, sig in zip(bodies, signatures, strict=True):
                result = ring.verify_detached(body, sig)
                assert result.signatures[0].primary_fingerprint == reporter_fpr

        def bare_decrypt() -> None:
            for data in ciphertexts:
                subprocess.run([*gpg, "--decrypt"], input=data, capture_output=True, check=True)

        def ours_decrypt() -> None:
            for data in ciphertexts:
                assert ring.decrypt(data, MAX_DECRYPTED).ok

        results = {}
        for name, bare, ours in (("verify", bare_verify, ours_verify),
                                 ("decrypt", bare_decrypt, ours_decrypt)):
            b, o = timed(bare), timed(ours)
            results[name] = {"bare_msg_per_s": round(args.n / b, 1),
                             "seclistd_msg_per_s": round(args.n / o, 1),
                             "ratio": round(o / b, 2)}
        print(json.dumps({"n": args.n, **results}))
    finally:
        project.close()
        reporter.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
