"""Keys that mail offers never touch the project's secret keys (issue 8, items 1 and 4), and
the project key `keys generate` makes is usable at once, with no edit of the configuration.

Real gpg homes (tests/pgp.py), SQLite, the relay sink; every message is accepted at a fixed
``NOW`` and case IDs are read from the outcome, never written down.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import subprocess
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from seclistd import daemon, packets
from seclistd.crypto import keyring_for
from seclistd.intake.store import Outcome, accept
from seclistd.mail import secure
from seclistd.models import Case, Event, Message
from tests.components import MACHINE_CLOCK, Sink, cli
from tests.conftest import Env, make_env
from tests.pgp import ENTITY_HEAD, Home, crlf, encrypted_mail, headers, new_home

NOW = dt.datetime(2027, 3, 2, 15, 0, tzinfo=dt.UTC)


def run(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI on the machine's clock, which is gpg's: the keys these tests make are made
    now, and a keyring on a clock days behind would find them made in the future."""
    return cli(env.path, *args, at=MACHINE_CLOCK)
OURS = "security@example.org"
REPORTER = "rita@example.net"
TEXT = ("Version 2.3.1 of the parser overflows a heap buffer on a crafted file; an attacker "
        "can run code. Steps: open poc.cfg.\n")


def mail_with_keys(blobs: list[bytes], *, binary: bool = False, body: str = TEXT,
                   extra_headers: str = "") -> bytes:
    """A report with each blob attached as application/pgp-keys (base64 when ``binary``)."""
    boundary = f"mix-{uuid.uuid4().hex[:12]}"
    raw = (headers(REPORTER, "Heap overflow", extra=extra_headers)
           + f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'
           + f"--{boundary}\r\n" + ENTITY_HEAD + crlf(body)).encode()
    for number, blob in enumerate(blobs):
        part = (f"\r\n--{boundary}\r\nContent-Type: application/pgp-keys; name=k{number}.asc"
                f"\r\nContent-Disposition: attachment; filename=k{number}.asc\r\n")
        if binary:
            encoded = base64.encodebytes(blob).replace(b"\n", b"\r\n")
            raw += (part + "Content-Transfer-Encoding: base64\r\n\r\n").encode() + encoded
        else:
            raw += (part + "\r\n").encode() + blob
    return raw + f"\r\n--{boundary}--\r\n".encode()


def armor(binary: bytes, label: str = "PUBLIC KEY BLOCK") -> bytes:
    lines = base64.encodebytes(binary).decode().strip().splitlines()
    return (f"-----BEGIN PGP {label}-----\r\n\r\n" + "\r\n".join(lines)
            + f"\r\n-----END PGP {label}-----\r\n").encode()


def compressed_bomb(expanded: int) -> bytes:
    """A compressed data packet (tag 8, zlib) that expands to ``expanded`` bytes of a literal
    data packet: what twelve 2.5 KB "keys" used to make gpg unpack inside the transaction."""
    literal = b"\xcb\xff" + (expanded + 6).to_bytes(4, "big") + b"b\x00\x00\x00\x00\x00"
    squeeze = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(1 << 20)
    body = squeeze.compress(literal) + b"".join(
        squeeze.compress(chunk) for _ in range(expanded >> 20)) + squeeze.flush()
    packet_body = b"\x01" + body  # algorithm 1: ZIP (raw deflate)
    return b"\xc8\xff" + len(packet_body).to_bytes(4, "big") + packet_body


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Home]:
    """The project's GnuPG home, empty: no key has been generated yet."""
    home = new_home()
    yield home
    home.close()


@pytest.fixture
def others() -> Iterator[list[Home]]:
    homes: list[Home] = []
    yield homes
    for home in homes:
        home.close()


def stranger(others: list[Home], name: str, email: str) -> tuple[Home, str]:
    home = new_home()
    others.append(home)
    return home, home.generate(name, email)


@pytest.fixture
def env(tmp_path: Path, project: Home, sink: Sink) -> Env:
    return make_env(tmp_path, relay_port=sink.port, gnupg_home=project.path)


def ingest(env: Env, raw: bytes) -> Outcome:
    return accept(env.factory, env.settings, raw, source="ingest", now=NOW)


def refusals(env: Env, case_id: str) -> list[str]:
    with env.factory() as session:
        return [e.detail for e in session.scalars(
            select(Event).where(Event.case_id == case_id, Event.action == "key_refused")
            .order_by(Event.id))]


def fingerprints(home: Path) -> set[str]:
    """Primary-key fingerprints of the public keys in ``home`` (no agent is started)."""
    listing = subprocess.run(["gpg", "--homedir", str(home), "--batch", "--no-autostart",
                              "--with-colons", "--list-keys"],
                             capture_output=True, text=True).stdout
    records = [line.split(":") for line in listing.splitlines()]
    return {r[9] for previous, r in zip(records, records[1:], strict=False)
            if r[0] == "fpr" and previous[0] == "pub"}


# -- item 4: a secret key in a mail -----------------------------------------------------------

@pytest.mark.parametrize("form", ["armored attachment", "binary attachment", "pasted"])
def test_a_secret_key_with_our_address_in_a_mail_is_refused_and_keys_generate_still_works(
        env: Env, project: Home, others: list[Home], form: str):
    mallory, planted = stranger(others, "Example security team", OURS)
    secret = mallory.run("--export-secret-keys", planted)
    raw = {"armored attachment": lambda: mail_with_keys([armor(secret, "PRIVATE KEY BLOCK")]),
           "binary attachment": lambda: mail_with_keys([secret], binary=True),
           "pasted": lambda: mail_with_keys(
               [], body=TEXT + armor(secret, "PRIVATE KEY BLOCK").decode())}[form]()

    outcome = ingest(env, raw)

    # The report itself is processed; the refusal is on its case, with no key material.
    assert outcome.status == "processed" and outcome.route == "new_report"
    [reason] = refusals(env, outcome.case_id)
    assert "secret key material" in reason
    assert "BEGIN" not in reason and planted not in reason
    offered = project.path / "offered"
    assert planted not in fingerprints(project.path) | fingerprints(offered)
    for home in (project.path, offered):  # gpg keeps secret keys here, one file per key
        assert not any((home / "private-keys-v1.d").glob("*"))

    generated = run(env, "--json", "keys", "generate")
    assert generated.returncode == 0, generated.stderr
    ours = json.loads(generated.stdout)["fingerprint"]
    listed = json.loads(run(env, "--json", "keys", "list").stdout)
    assert [(k["fingerprint"], k["secret"]) for k in listed] == [(ours, True)]


def test_gpg_itself_refuses_secret_material_the_packet_scan_did_not_see(
        env: Env, project: Home, others: list[Home]):
    """The second gate: gpg's show-only listing, should a secret key ever pass the scan."""
    mallory, planted = stranger(others, "Mallory", "mallory@example.net")
    ring = keyring_for(env.settings.gnupg)
    result = ring.import_offered([mallory.run("--export-secret-keys", planted)])
    assert result.fingerprints == () and "secret key material" in result.refused[0]
    assert planted not in fingerprints(project.path) | fingerprints(project.path / "offered")


def test_an_offered_public_key_with_our_address_does_not_fool_keys_generate(
        env: Env, project: Home, others: list[Home]):
    mallory, lookalike = stranger(others, "Example security team", OURS)
    outcome = ingest(env, mail_with_keys([mallory.export(lookalike)]))
    assert refusals(env, outcome.case_id) == []
    assert lookalike in fingerprints(project.path / "offered")
    assert lookalike not in fingerprints(project.path)

    generated = run(env, "--json", "keys", "generate")
    assert generated.returncode == 0, generated.stderr
    ours = json.loads(generated.stdout)["fingerprint"]
    listed = {k["fingerprint"]: k for k in json.loads(
        run(env, "--json", "keys", "list").stdout)}
    assert (listed[ours]["secret"], listed[ours]["keyring"]) == (True, "project")
    assert (listed[lookalike]["secret"], listed[lookalike]["keyring"]) == (False, "offered")
    exported = run(env, "keys", "export")
    assert exported.returncode == 0
    assert project.gpg.import_keys(exported.stdout).fingerprints == [ours]
    # Naming our address instead of a fingerprint would match the planted key too: refused.
    by_address = run(env, "keys", "export", OURS)
    assert by_address.returncode == 2 and "is not a fingerprint" in by_address.stderr
    assert "BEGIN PGP" not in by_address.stdout
    # The operator's choices look at the project keyring only.
    assert keyring_for(env.settings.gnupg).key_for_address(OURS) == ours


# -- item 1: keys offered by mail are bounded ------------------------------------------------

@pytest.mark.parametrize("form", ["attachment", "armored attachment", "pasted", "autocrypt"])
def test_compressed_packets_are_refused_before_gpg_sees_them(env: Env, project: Home,
                                                             form: str):
    bomb = compressed_bomb(16 << 20)  # 16 MB for gpg to unpack, were it let through
    assert len(bomb) < secure.MAX_KEY_BYTES // 2
    keydata = base64.b64encode(bomb).decode()
    folded = "\r\n ".join(keydata[i:i + 72] for i in range(0, len(keydata), 72))
    raw = {"attachment": lambda: mail_with_keys([bomb] * 12, binary=True),
           "armored attachment": lambda: mail_with_keys([armor(bomb)] * 12),
           "pasted": lambda: mail_with_keys([], body=TEXT + armor(bomb).decode() * 12),
           "autocrypt": lambda: mail_with_keys([], extra_headers=(
               f"Autocrypt: addr={REPORTER}; keydata=\r\n {folded}\r\n"))}[form]()
    started = time.monotonic()
    outcome = ingest(env, raw)
    elapsed = time.monotonic() - started
    assert outcome.status == "processed" and outcome.route == "new_report"
    [reason] = refusals(env, outcome.case_id)  # the same bytes twelve times: looked at once
    assert "compressed data packet" in reason
    assert fingerprints(project.path / "offered") == set()
    assert elapsed < 5, f"{elapsed:.1f} s"


def test_distinct_compressed_packets_count_against_the_quota(env: Env, project: Home):
    bombs = [compressed_bomb((1 + n) << 18) for n in range(12)]
    outcome = ingest(env, mail_with_keys(bombs, binary=True))
    reasons = refusals(env, outcome.case_id)
    assert len(reasons) == 4
    assert all("compressed data packet" in r for r in reasons[:3])
    assert "more than 3 keys" in reasons[3]


def test_only_the_first_keys_of_a_message_are_looked_at(env: Env, project: Home,
                                                        others: list[Home]):
    offered = [stranger(others, f"Key {n}", f"k{n}@example.net") for n in range(5)]
    outcome = ingest(env, mail_with_keys([home.export(fpr) for home, fpr in offered]))
    assert outcome.status == "processed"
    imported = fingerprints(project.path / "offered")
    assert imported == {fpr for _home, fpr in offered[:3]}
    [reason] = refusals(env, outcome.case_id)
    assert "more than 3 keys" in reason


def test_an_oversized_key_is_refused_and_the_report_still_opens(env: Env, project: Home):
    big = armor(bytes(secure.MAX_KEY_BYTES))  # refused on its size, before any decoding
    outcome = ingest(env, mail_with_keys([big]))
    assert outcome.route == "new_report"
    [reason] = refusals(env, outcome.case_id)
    assert f"over the limit of {secure.MAX_KEY_BYTES}" in reason
    assert fingerprints(project.path / "offered") == set()


def test_gpg_work_on_offered_keys_is_bounded_in_time(env: Env, others: list[Home]):
    home, fpr = stranger(others, "Rita Reporter", REPORTER)
    ring = keyring_for(env.settings.gnupg)
    spent = ring.import_offered([home.run("--export", fpr)], budget=0)
    assert spent.fingerprints == () and "were spent" in spent.refused[0]
    done = ring.import_offered([home.run("--export", fpr)])
    assert done.fingerprints == (fpr,) and done.refused == ()


# -- the packet scan itself -------------------------------------------------------------------

def test_packet_headers_old_and_new_formats():
    uid = b"Rita <rita@example.net>"
    key_body = bytes(40)
    new_format = b"\xc6" + bytes([len(key_body)]) + key_body + b"\xcd" + bytes([len(uid)]) + uid
    old_format = (b"\x99" + len(key_body).to_bytes(2, "big") + key_body  # tag 6, 2 octets
                  + b"\xb4" + bytes([len(uid)]) + uid)  # tag 13, 1 octet
    two_octet = b"\xc6" + bytes([192 + ((300 - 192) >> 8), (300 - 192) & 0xFF]) + bytes(300)
    assert [p.tag for p in packets.packets(new_format)] == [6, 13]
    assert [p.tag for p in packets.packets(old_format)] == [6, 13]
    assert [p.end for p in packets.packets(two_octet)] == [len(two_octet)]
    assert packets.split_keys(new_format + old_format) == [new_format, old_format]
    many = b"\xc6\x01\x00" + b"\xcd\x01u" * 32 + b"\xce\x01\x00" * 16
    assert packets.split_keys(many * 2) == [many, many]  # the limits are per key
    refused = {
        b"\x95\x00\x01\x00": "secret key material",  # old format, tag 5
        b"\xc7\x01\x00": "secret key material",  # new format, tag 7
        b"\xa3\x01": "compressed data packet",  # old format, tag 8, indeterminate
        b"\xc8\xe5" + bytes(32): "compressed data packet",  # new format, partial length
        b"\xcb\x01\x00": "type 11",  # literal data
        b"\xc6\xe5" + bytes(32): "partial body length",
        b"\xc6\x05\x00": "truncated",
        b"\xcd\x01u": "does not start with a public key",
        b"plain text": "not OpenPGP data",
        b"\xc6\x01\x00" + b"\xcd\x01u" * 33: "more than 32 user IDs",
        b"\xc6\x01\x00" + b"\xce\x01\x00" * 17: "more than 16 subkeys",
        b"": "empty",
    }
    for data, why in refused.items():
        with pytest.raises(packets.NotAPublicKey, match=why):
            packets.split_keys(data)


def test_finding_armored_blocks_is_linear():
    lines = b"-----BEGIN PGP PUBLIC KEY BLOCK-----\r\n" * 20_000
    started = time.monotonic()
    assert packets.armored_blocks(lines + b"x" * 200_000, limit=7) == []
    assert time.monotonic() - started < 0.5
    block = armor(b"\xc6\x01\x00")
    text = b"see my key:\r\n" + block + b"\r\nand again\r\n" + block
    assert packets.armored_blocks(text, limit=7) == [block.strip(), block.strip()]
    assert packets.dearmor(block) == b"\xc6\x01\x00"


# -- keys generate makes the project key usable at once --------------------------------------

def test_keys_generate_then_export_doctor_and_an_encrypted_report_with_no_config_edit(
        env: Env, project: Home, others: list[Home], sink: Sink):
    before = run(env, "--json", "doctor")
    [gnupg_before] = [c for c in json.loads(before.stdout) if c["name"] == "project_key"]
    assert gnupg_before["status"] == "fail"
    assert f"seclistd --config {env.path} keys generate" in gnupg_before["fix"]

    generated = run(env, "--json", "keys", "generate")
    assert generated.returncode == 0, generated.stderr
    ours = json.loads(generated.stdout)["fingerprint"]
    assert 'key = ""' in env.path.read_text()  # the configuration was not touched

    exported = run(env, "keys", "export")
    assert exported.returncode == 0, exported.stderr
    doctor = run(env, "--json", "doctor")
    [gnupg_check] = [c for c in json.loads(doctor.stdout) if c["name"] == "project_key"]
    assert gnupg_check["status"] == "ok" and ours in gnupg_check["detail"], gnupg_check

    reporter, reporter_fpr = stranger(others, "Rita Reporter", REPORTER)
    reporter.gpg.import_keys(exported.stdout)
    inner = (ENTITY_HEAD + crlf(TEXT)).encode()
    outcome = ingest(env, encrypted_mail(REPORTER, "report", reporter.encrypt(inner, ours)))
    assert outcome.route == "new_report"
    with env.factory() as session:
        assert "overflows a heap buffer" in session.scalar(select(Message.text))
        assert session.get(Case, outcome.case_id).encrypted


def test_answers_are_signed_by_the_generated_project_key(env: Env, project: Home,
                                                         others: list[Home], sink: Sink):
    generated = run(env, "--json", "keys", "generate")
    ours = json.loads(generated.stdout)["fingerprint"]
    reporter, reporter_fpr = stranger(others, "Rita Reporter", REPORTER)
    reporter.gpg.import_keys(run(env, "keys", "export").stdout)
    outcome = ingest(env, mail_with_keys([reporter.export(reporter_fpr)]))
    with env.factory() as session:
        assert session.get(Case, outcome.case_id).reporter_key == reporter_fpr
    daemon.drain_relay(env.settings, env.factory, lambda: NOW)
    [receipt] = sink.to(REPORTER)
    armored = receipt.message.get_payload()[1].get_payload(decode=True)
    verified = reporter.gpg.decrypt(armored)
    assert verified.ok and verified.valid and verified.pubkey_fingerprint == ours


def test_a_key_the_operator_imported_is_pinned_but_not_copied_to_the_offered_keyring(
        env: Env, project: Home, others: list[Home]):
    reporter, reporter_fpr = stranger(others, "Rita Reporter", REPORTER)
    key_file = env.path.parent / "rita.asc"
    key_file.write_bytes(reporter.export(reporter_fpr))
    assert run(env, "keys", "import", str(key_file)).returncode == 0
    outcome = ingest(env, mail_with_keys([reporter.export(reporter_fpr)]))
    with env.factory() as session:
        assert session.get(Case, outcome.case_id).reporter_key == reporter_fpr
    assert refusals(env, outcome.case_id) == []
    assert reporter_fpr in fingerprints(project.path)
    assert reporter_fpr not in fingerprints(project.path / "offered")
