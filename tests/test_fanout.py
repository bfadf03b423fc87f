"""The relay's parallel sealing (issue 10, the fan-out of an embargoed notice): one batch of
confidential mail to several list members goes out as one copy per member, each encrypted
to that member's own key alone; a member whose pinned key cannot be used gets its copy held
while the others go, with real gpg homes and the relay delivering to a sink."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from seclistd import db, relay
from seclistd.list_models import Member
from seclistd.mail.pgpmime import encrypted_payload
from seclistd.models import Outbox
from seclistd.packets import recipient_key_ids
from seclistd.workflows import member_mail, member_states
from tests.components import Sink
from tests.pgp import Home, new_home
from tests.test_openpgp import World, make_world

SECRET = "Embargoed until Thursday: the fix for the heap overflow lands in 2.3.1."


@pytest.fixture
def world(tmp_path: Path, sink: Sink) -> Iterator[World]:
    with make_world(tmp_path, sink) as w:
        yield w


@pytest.fixture
def homes() -> Iterator[list[Home]]:
    made = [new_home() for _ in range(3)]
    yield made
    for home in made:
        home.close()


def add_members(world: World, pinned: dict[str, str | None]) -> None:
    with db.transaction(world.factory) as session:
        for i, (email, fpr) in enumerate(pinned.items()):
            member_states.add_member(session, list_name="distributors", email=email,
                                     organization=f"Distro {i}", actor="operator",
                                     now=world.now(), fingerprint=fpr)


def notice_to_all(world: World) -> None:
    with db.transaction(world.factory) as session:
        for member in session.scalars(select(Member).order_by(Member.id)):
            member_mail.mail_member(session, world.now(), world.settings, member,
                                    kind="embargo_notice", subject="Embargoed notice",
                                    body=SECRET)


def test_one_unusable_key_holds_its_copy_and_the_batch_goes_out_encrypted_per_member(
        world: World, homes: list[Home]):
    keyed = {f"security@distro{i}.example": home.generate(f"Distro {i}",
                                                          f"security@distro{i}.example")
             for i, home in enumerate(homes)}
    for fpr, home in zip(keyed.values(), homes, strict=True):
        world.project.gpg.import_keys(home.export(fpr))
        home.gpg.import_keys(world.project.export(world.project_fpr))  # checks the signature
    broken = "security@distro9.example"  # pinned, but the key is not in the keyring
    add_members(world, {**keyed, broken: world.mallory_fpr})
    notice_to_all(world)

    # One drain: the whole batch is claimed at once and sealed by two workers.
    transport = relay.make_transport(world.settings.relay)
    try:
        sent = relay.drain(world.factory, world.settings.relay, transport, world.now,
                           relay.lease_owner(), seal=relay.sealer(world.settings), workers=2)
    finally:
        transport.close()
    assert sent == 3

    with world.factory() as session:
        rows = {r.to_addr: r for r in session.scalars(select(Outbox))}
    assert {a: rows[a].status for a in rows} == {**dict.fromkeys(keyed, "sent"),
                                                 broken: "held"}
    assert all(rows[a].encrypted for a in keyed)
    assert world.mallory_fpr in rows[broken].last_error
    assert world.sink.to(broken) == []
    assert SECRET.encode() not in b"".join(m.raw for m in world.sink.messages())

    for address, home in zip(keyed, homes, strict=True):
        [copy] = world.sink.to(address)
        assert copy.message.get_content_type() == "multipart/encrypted"
        ok, plain = home.decrypt(copy.raw)
        assert ok and SECRET.encode() in plain  # its own key opens it ...
        others = [h for h in homes if h is not home] + [world.mallory]
        assert not any(other.decrypt(copy.raw)[0] for other in others)  # ... no other does
        payload = encrypted_payload(copy.raw)
        assert payload is not None and len(recipient_key_ids(payload[0]) or []) == 1


def test_recipient_key_ids_reads_whom_a_message_is_for(world: World, homes: list[Home]):
    fprs = [home.generate(f"R{i}", f"r{i}@example.net") for i, home in enumerate(homes[:2])]
    sender = homes[2]
    for fpr, home in zip(fprs, homes, strict=False):
        sender.gpg.import_keys(home.export(fpr))
    both = sender.run("--armor", "--encrypt", "-r", fprs[0], "-r", fprs[1],
                      data=b"x" * 100_000)  # the data packet uses partial lengths
    ids = recipient_key_ids(both)
    listed = sender.run("--with-colons", "--list-keys", *fprs).decode().splitlines()
    subkeys = {line.split(":")[4] for line in listed if line.startswith("sub:")}
    assert ids is not None and set(ids) == subkeys and len(ids) == 2
    # A passphrase could open it, or it names nobody: whom it is for is unknown.
    symmetric = sender.gpg.encrypt(b"x", None, symmetric=True, passphrase="pw", armor=True)
    assert symmetric.ok and recipient_key_ids(bytes(symmetric.data)) is None
    hidden = sender.run("--armor", "--throw-keyids", "--encrypt", "-r", fprs[0], data=b"x")
    assert recipient_key_ids(hidden) is None
    assert recipient_key_ids(b"not OpenPGP at all") is None
