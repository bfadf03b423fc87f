"""Encrypted mail costs bounded work and storage (issue 8 item 1, found by the attack review):
a message made of thousands of session-key packets is refused before gpg tries the project
key on each, and a small message may not decrypt to tens of megabytes. Real gpg homes."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from seclistd import packets
from seclistd.mail import secure
from tests.components import Sink
from tests.pgp import encrypted_mail
from tests.test_openpgp import REPORTER, World, make_world


@pytest.fixture
def world(tmp_path: Path, sink: Sink) -> Iterator[World]:
    with make_world(tmp_path, sink) as w:
        yield w


def packet(tag: int, body: bytes) -> bytes:
    return bytes([0xC0 | tag, len(body)]) + body


def pkesk() -> bytes:
    """A version-3 PKESK to the wildcard key ID (gpg tries every secret key on it)."""
    mpi = (263).to_bytes(2, "big") + b"\x40" + os.urandom(32)
    return packet(1, b"\x03" + b"\x00" * 8 + bytes([18]) + mpi + bytes([48]) + os.urandom(48))


def armored(data: bytes) -> bytes:
    return (b"-----BEGIN PGP MESSAGE-----\r\n\r\n"
            + base64.encodebytes(data).replace(b"\n", b"\r\n")
            + b"-----END PGP MESSAGE-----\r\n")


def test_session_keys_are_counted_without_gpg():
    message = b"".join(pkesk() for _ in range(5)) + packet(18, b"\x01" + os.urandom(50))
    assert packets.session_keys(message, 32) == 5
    assert packets.session_keys(armored(message), 32) == 5
    flood = b"".join(pkesk() for _ in range(4000))
    assert packets.session_keys(armored(flood), 32) == 33  # stops counting past the limit
    assert packets.session_keys(b"not openpgp", 32) == 0


def test_thousands_of_recipients_are_refused_before_gpg(world: World):
    body = b"".join(pkesk() for _ in range(3000)) + packet(18, b"\x01" + os.urandom(100))
    outcome = world.ingest(encrypted_mail(REPORTER, "encrypted", armored(body)))
    with world.factory() as session:
        from seclistd.models import Case

        case = session.get(Case, outcome.case_id)
        [message] = case.messages
        assert case.encrypted and message.encrypted
        assert f"more than {secure.MAX_RECIPIENTS} recipients" in message.text


def test_a_small_message_may_not_decrypt_to_tens_of_megabytes(world: World):
    zeros = b"\0" * (secure.DECRYPT_FLOOR + 1024 * 1024)
    ciphertext = world.reporter.run("--armor", "--compress-algo", "bzip2", "-z", "9",
                                    "--encrypt", "-r", world.project_fpr, data=zeros)
    assert len(ciphertext) * secure.DECRYPT_RATIO < len(zeros)
    outcome = world.ingest(encrypted_mail(REPORTER, "encrypted", ciphertext))
    assert outcome.case_id is None
    assert "decrypted content exceeds" in (outcome.reason or "")
    with world.factory() as session:
        from seclistd.models import Message

        [stored] = session.query(Message).all()
        assert stored.status == "quarantined" and len(stored.text or "") < 1024 * 1024
