"""Join requests end to end with real gpg homes: the policies' own example requests go from
the first mail to an approved member with a pinned key (missing answers asked for once,
the key proved by a token the applicant decrypts, a member's signed vouch, the review by
the CLI or by a signed team mail), plus expiry, denial and the refusals an operator sees."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import re
import subprocess
import time
from collections.abc import Iterator
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from sqlalchemy import select

from seclistd import config, daemon, db
from seclistd.intake.store import Outcome, accept
from seclistd.list_models import JoinRequest, Member
from seclistd.models import Outbox
from seclistd.workflows import member_rotation, member_states, requests
from tests.components import MACHINE_CLOCK, Received, Sink, cli, write_config
from tests.pgp import (
    Home,
    encrypted_mail,
    entity,
    headers,
    new_home,
    signed_mail,
    with_key_attached,
)

DATA = Path(__file__).parent / "data"
ALICE = "alice@example.org"
APPLICANT = "acidburn@seven-corp.example"
ALIAS = "security-response-team@example.com"  # the alias the OCI example asks to subscribe
CRASH = "crash@override.example"
MALLORY = "mallory@example.net"
LISTS = """
[[lists]]
name = "oci"
address = "security-announce@opencontainers.org"
criteria = "oci"

[[lists]]
name = "k8s"
address = "distributors-announce@kubernetes.io"
criteria = "kubernetes"

[membership]
vouches_required = 1
request_expiry_days = 30
"""


@dataclasses.dataclass
class World:
    """Real gpg homes for the project, a team member (Alice), the applicant, a list member
    who vouches (CrashOverride) and an attacker. Its clock is the machine's (gpg stamps
    signatures with it), read once and run on with the monotonic clock."""

    tmp: Path
    path: Path
    settings: config.Settings
    factory: object
    sink: Sink
    project: Home
    project_fpr: str
    alice: Home
    alice_fpr: str
    applicant: Home
    applicant_fpr: str
    crash: Home
    crash_fpr: str
    mallory: Home
    mallory_fpr: str
    start: dt.datetime = dataclasses.field(default_factory=lambda: dt.datetime.now(dt.UTC))
    ticks: float = dataclasses.field(default_factory=time.monotonic)

    def now(self) -> dt.datetime:
        return self.start + dt.timedelta(seconds=time.monotonic() - self.ticks)

    def request_id(self, n: int = 1) -> str:
        return f"JOIN-{self.start.astimezone(self.settings.project.tz).year}-{n:04d}"

    def ingest(self, raw: bytes, at: dt.datetime | None = None) -> Outcome:
        return accept(self.factory, self.settings, raw, source="ingest", now=at or self.now())

    def deliver(self) -> None:
        daemon.drain_relay(self.settings, self.factory, self.now)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return cli(self.path, *args, at=MACHINE_CLOCK)

    def request(self, request_id: str | None = None) -> JoinRequest:
        with self.factory() as session:
            req = session.get(JoinRequest, request_id or self.request_id())
            assert req is not None
            _ = list(req.events), list(req.vouches)
            session.expunge_all()
            return req

    def actions(self, request_id: str | None = None) -> list[str]:
        return [e.action for e in self.request(request_id).events]

    def add_member(self, email: str, name: str, organization: str, fingerprint: str | None,
                   list_name: str = "oci", state: str = "active") -> None:
        with db.transaction(self.factory) as session:
            member = member_states.add_member(
                session, list_name=list_name, email=email, organization=organization,
                name=name, fingerprint=fingerprint, actor="test", now=self.now())
            if state != "active":
                member_states.change_state(session, member, "suspend", actor="test",
                                           now=self.now(), reason="bounces")

    def member(self, email: str) -> Member:
        with self.factory() as session:
            found = session.scalar(select(Member).where(Member.email == email))
            assert found is not None
            return found

    def mails_to(self, address: str) -> list[Received]:
        return self.sink.to(address)

    def texts_to(self, address: str, home: Home | None = None) -> list[str]:
        return [self.text_of(r, home) for r in self.mails_to(address)]

    def text_of(self, received: Received, home: Home | None = None) -> str:
        """The body as the recipient reads it (decrypted with ``home`` when encrypted)."""
        msg = received.message
        if msg.get_content_type() == "multipart/encrypted":
            assert home is not None, "an encrypted mail needs the recipient's key"
            ok, plain = home.decrypt(msg.get_payload()[1].get_payload(decode=True))
            assert ok
            inner = message_from_bytes(plain, policy=policy.default)
            return inner.get_body(("plain",)).get_content()
        return msg.get_body(("plain",)).get_content()


@contextlib.contextmanager
def make_world(tmp_path: Path, sink: Sink, extra: str = LISTS) -> Iterator[World]:
    homes = [new_home() for _ in range(5)]
    project, alice, applicant, crash, mallory = homes
    try:
        project_fpr = project.generate("Example security team", "security@example.org")
        alice_fpr = alice.generate("Alice", ALICE)
        applicant_fpr = applicant.generate("Acidburn", APPLICANT)
        crash_fpr = crash.generate("CrashOverride", CRASH)
        mallory_fpr = mallory.generate("Mallory", MALLORY)
        # The operator imported the team's and the members' keys; everyone knows ours.
        project.gpg.import_keys(alice.export(alice_fpr))
        project.gpg.import_keys(crash.export(crash_fpr))
        for home in homes[1:]:
            home.gpg.import_keys(project.export(project_fpr))
        path = write_config(tmp_path, relay_port=sink.port, team=[ALICE],
                            gnupg_home=project.path, gnupg_key=project_fpr,
                            fingerprints={ALICE: alice_fpr}, extra=extra)
        settings = config.load(str(path))
        db.migrate(settings.database.url)
        engine = db.make_engine(settings.database.url)
        world = World(tmp_path, path, settings, db.session_factory(engine), sink, project,
                      project_fpr, alice, alice_fpr, applicant, applicant_fpr, crash,
                      crash_fpr, mallory, mallory_fpr)
        world.add_member(CRASH, "CrashOverride", "Override Linux", crash_fpr)
        world.add_member(CRASH, "CrashOverride", "Override Linux", crash_fpr, list_name="k8s")
        yield world
        engine.dispose()
    finally:
        for home in homes:
            home.close()


@pytest.fixture
def world(tmp_path: Path, sink: Sink) -> Iterator[World]:
    with make_world(tmp_path, sink) as w:
        yield w


def seed(name: str, drop: str | None = None) -> bytes:
    """A seed's example request; ``drop``: the quoted criterion (and its answer) left out."""
    text = (DATA / name).read_text()
    if drop:
        start = text.index(drop)
        end = text.find("\n> ", start + 1)
        text = text[:start] + (text[end + 1:] if end != -1 else "")
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode()


def reply(subject: str, body: str, *, sender: str = APPLICANT, key: bytes | None = None,
          in_reply_to: str | None = None) -> bytes:
    extra = f"In-Reply-To: {in_reply_to}\r\n" if in_reply_to else ""
    if key is not None:
        return headers(sender, subject, extra=extra).encode() + with_key_attached(body, key)
    return (headers(sender, subject, extra=extra)
            + "Content-Type: text/plain; charset=utf-8\r\n\r\n"
            + body.replace("\n", "\r\n") + "\r\n").encode()


def signed_by(home: Home, fpr: str, sender: str, body: str, subject: str = "vouch") -> bytes:
    signed = entity(body)
    return signed_mail(sender, subject, signed, home.sign(signed, fpr))


def token_from(world: World) -> str:
    """The token, read the way the applicant reads it: by decrypting the token mail."""
    [mail] = [r for r in world.mails_to(APPLICANT)
              if r.message.get_content_type() == "multipart/encrypted"
              and "Token:" in world.text_of(r, world.applicant)]
    assert mail.message.get_content_type() == "multipart/encrypted"
    assert b"Token:" not in mail.raw  # only inside the encryption
    text = world.text_of(mail, world.applicant)
    match = re.search(r"^Token: ([0-9a-f]{32})\s*$", text, re.M)
    assert match, text
    return match.group(1)


def answered_to_verifying(world: World) -> str:
    """The OCI example without its PGP answer, then the completing reply with the key."""
    outcome = world.ingest(seed("join_oci.eml", drop="> 6. Be willing and able"))
    assert outcome.route == "join_request" and outcome.request_id == world.request_id()
    req = world.request()
    assert (req.state, req.missing_criteria) == ("incomplete", ["pgp"])
    world.deliver()
    [first] = world.mails_to(APPLICANT)
    body = world.text_of(first)
    assert first.message["Subject"].startswith(f"[{req.id}]")
    assert "PGP" in body and "gpg --export --armor acidburn@seven-corp.example" in body
    completing = reply(f"Re: [{req.id}] Your request to join",
                       "> Be willing and able to handle PGP-encrypted email.\n\n"
                       "Yes, our key is attached.\n",
                       key=world.applicant.export(world.applicant_fpr))
    assert world.ingest(completing).route == "reply"
    req = world.request()
    assert req.state == "verifying" and req.missing_criteria == []
    assert req.fingerprint == world.applicant_fpr and req.key_proved_at is None
    return req.id


def test_oci_example_request_to_member_with_cli_approval(world: World):
    request_id = answered_to_verifying(world)
    world.deliver()
    # The voucher the applicant named (CrashOverride) is asked, encrypted to its key.
    [ask] = world.mails_to(CRASH)
    ask_text = world.text_of(ask, world.crash)
    assert f"X-VOUCH: {request_id}" in ask_text and APPLICANT in ask_text
    # The token dance: decrypt, answer.
    token = token_from(world)
    # Once sent, the token lives only in the applicant's mailbox: the outbox's stored copy
    # is gone (the database keeps the SHA-256 only).
    with world.factory() as session:
        [row] = session.scalars(select(Outbox).where(Outbox.kind == "request_token")).all()
        assert row.status == "sent" and token.encode() not in row.raw
    world.ingest(reply(f"Re: [{request_id}] Proof of key", f"Token: {token}\n"))
    req = world.request()
    assert req.key_proved_at is not None and req.token_sha256 is None
    assert req.state == "verifying"  # the vouch is still missing
    # CrashOverride vouches with a signed mail.
    outcome = world.ingest(signed_by(world.crash, world.crash_fpr, CRASH,
                                     f"X-VOUCH: {request_id}\n\nI know them well."))
    assert outcome.route == "join_command" and outcome.request_id == request_id
    req = world.request()
    assert req.state == "pending_review" and len(req.vouches) == 1
    world.deliver()
    [review] = [t for t in world.texts_to(ALICE, world.alice) if "ready for your decision" in t]
    assert f"requests approve {request_id}" in review
    # The operator looks and approves.
    shown = world.cli("--json", "requests", "show", request_id)
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert {k: doc[k] for k in ("id", "state", "applicant", "missing_criteria")} == {
        "id": request_id, "state": "pending_review", "applicant": APPLICANT,
        "missing_criteria": []}
    assert doc["fingerprint"] == world.applicant_fpr and doc["vouches"][0]["member"] == CRASH
    listed = json.loads(world.cli("--json", "requests", "list", "--state",
                                  "pending_review").stdout)
    assert [r["id"] for r in listed] == [request_id]
    done = world.cli("requests", "approve", request_id)
    assert done.returncode == 0, done.stderr
    with world.factory() as session:
        member = session.scalar(select(Member).where(Member.email == ALIAS))
        # The applicant proved its own mailbox, not the alias it asked to subscribe: the
        # member exists, suspended (nothing embargoed goes there) until the alias confirms.
        assert member is not None and member.state == "suspended" and member.list_name == "oci"
        assert member.state_reason.startswith(member_rotation.ADDRESS_REASON)
        assert member.fingerprint == world.applicant_fpr and member.request_id == request_id
    assert world.request().state == "approved"
    world.deliver()
    texts = {t.split("\n", 1)[0]: t for t in world.texts_to(ALIAS, world.applicant)}
    [confirm] = [t for t in texts.values() if "Token:" in t]
    token = re.search(r"^Token: ([0-9a-f]{32})\s*$", confirm, re.M).group(1)
    # A token from any other address confirms nothing; from the alias it does.
    world.ingest(reply(f"Re: {ALIAS}", f"Token: {token}\n"))
    assert world.member(ALIAS).state == "suspended"
    world.ingest(reply("Re: confirm this address", f"Token: {token}\n", sender=ALIAS))
    assert world.member(ALIAS).state == "active"
    [welcome] = [r for r in world.mails_to(ALIAS) if "Welcome to" in world.text_of(
        r, world.applicant)]
    assert welcome.message.get_content_type() == "multipart/encrypted"
    text = world.text_of(welcome, world.applicant)
    for duty in ("Embargo", "X-LEAK", "X-CASE", "Contributing back", "X-LEAVE"):
        assert duty in text
    assert "opencontainers" not in text.split("Welcome to")[0]  # our words, not theirs
    # Approving again is refused with the state named.
    again = world.cli("requests", "approve", request_id)
    assert again.returncode == 1 and "is approved" in again.stderr
    assert "Traceback" not in again.stderr


def test_kubernetes_example_approved_by_a_signed_team_mail(world: World):
    key = world.applicant.export(world.applicant_fpr)
    raw = seed("join_kubernetes.eml")
    head, _, body = raw.partition(b"\r\n\r\n")
    head = head.replace(b"Content-Type: text/plain; charset=utf-8", b"")
    outcome = world.ingest(head.rstrip(b"\r\n") + b"\r\n"
                           + with_key_attached(body.decode(), key))
    assert outcome.route == "join_request"
    req = world.request()
    assert req.list_name == "k8s" and req.state == "verifying", req.missing_criteria
    assert req.fingerprint == world.applicant_fpr
    world.deliver()
    # The applicant answers the token encrypted to the project key.
    armored = world.applicant.encrypt(entity(f"Token: {token_from(world)}"), world.project_fpr)
    world.ingest(encrypted_mail(APPLICANT, f"Re: [{req.id}] ...", armored))
    assert world.request().key_proved_at is not None
    world.ingest(signed_by(world.crash, world.crash_fpr, CRASH, f"X-VOUCH: {req.id}"))
    assert world.request().state == "pending_review"
    decision = signed_by(world.alice, world.alice_fpr, ALICE,
                         f"X-REQUEST: {req.id}\nX-APPROVE\n\nWelcome aboard.")
    assert world.ingest(decision).route == "join_command"
    assert world.request().state == "approved"
    with world.factory() as session:
        member = session.scalar(select(Member).where(Member.list_name == "k8s",
                                                     Member.request_id == req.id))
        assert member.fingerprint == world.applicant_fpr and member.state == "suspended"
        assert member.email == "kubernetes-security-team@example.com"  # until it confirms


def test_approving_too_early_is_refused_and_force_records_what_lacked(world: World):
    request_id = answered_to_verifying(world)
    early = world.cli("requests", "approve", request_id)
    assert early.returncode == 1
    assert f"{request_id} is verifying" in early.stderr and "--force" in early.stderr
    assert "proof of key" in early.stderr and "vouch" in early.stderr
    forced = world.cli("--json", "requests", "approve", request_id, "--force")
    assert forced.returncode == 0, forced.stderr
    doc = json.loads(forced.stdout)
    assert doc["action"] == "force_approve" and "proof of key" in doc["detail"]
    with world.factory() as session:
        member = session.scalar(select(Member).where(Member.email == ALIAS))
        assert member.fingerprint is None  # never proved: not pinned


def test_deny_tells_the_applicant_and_unknown_ids_are_one_line(world: World):
    world.ingest(seed("join_oci.eml"))
    request_id = world.request_id()
    denied = world.cli("requests", "deny", request_id, "--message", "Not a distribution.")
    assert denied.returncode == 0, denied.stderr
    assert world.request().state == "denied"
    world.deliver()
    notice = [r for r in world.mails_to(APPLICANT) if "declined" in r.message["Subject"]]
    assert len(notice) == 1 and "Not a distribution." in world.text_of(notice[0])
    shown = world.cli("requests", "show", request_id)
    assert shown.returncode == 0, shown.stderr
    assert "denied" in shown.stdout
    assert "answers:" in shown.stdout and "We accept." in shown.stdout
    listed = world.cli("requests", "list")
    assert request_id in listed.stdout and APPLICANT in listed.stdout
    missing = world.cli("requests", "show", "JOIN-1999-0042")
    assert missing.returncode == 1 and "no join request JOIN-1999-0042" in missing.stderr
    bad_state = world.cli("requests", "list", "--state", "bogus")
    assert bad_state.returncode == 2


def test_silent_requests_expire_and_the_applicant_is_told(world: World):
    world.ingest(seed("join_oci.eml", drop="> 6. Be willing and able"))
    request_id = world.request_id()
    with db.transaction(world.factory) as session:
        assert requests.sweep(session, world.now() + dt.timedelta(days=29), world.settings) == 0
    assert world.request().state == "incomplete"
    with db.transaction(world.factory) as session:
        assert requests.sweep(session, world.now() + dt.timedelta(days=31), world.settings) == 1
    req = world.request()
    assert req.state == "expired" and world.actions()[-1] == "expire"
    with world.factory() as session:
        assert session.scalar(select(Outbox).where(Outbox.kind == "request_expired",
                                                   Outbox.request_id == request_id))


def test_a_request_under_review_never_expires(world: World):
    request_id = answered_to_verifying(world)
    world.deliver()
    world.ingest(reply(f"[{request_id}] token", f"Token: {token_from(world)}"))
    world.ingest(signed_by(world.crash, world.crash_fpr, CRASH, f"X-VOUCH: {request_id}"))
    with db.transaction(world.factory) as session:
        assert requests.sweep(session, world.now() + dt.timedelta(days=90), world.settings) == 0
    assert world.request().state == "pending_review"


def test_no_matching_voucher_asks_the_team(world: World):
    raw = seed("join_oci.eml").replace(b"CrashOverride will vouch", b"Zero Cool will vouch")
    world.ingest(raw)
    assert "voucher_unknown" in world.actions()
    world.deliver()
    assert not world.mails_to(CRASH)
    assert any("matches no active member" in t for t in world.texts_to(ALICE, world.alice))


def test_bulk_mail_shaped_like_a_request_is_not_one(world: World):
    raw = seed("join_oci.eml").replace(b"MIME-Version", b"Precedence: bulk\r\nMIME-Version")
    assert world.ingest(raw).route == "new_report"


def test_a_partial_answer_gets_exactly_what_is_still_missing(world: World):
    from seclistd.workflows import criteria

    oci = criteria.criteria_for(world.settings.lists[0])
    raw = seed("join_oci.eml", drop="> 6. Be willing and able")
    raw = seed_without(raw, "> 4. Accept the Embargo Policy")
    world.ingest(raw)
    req = world.request()
    assert req.state == "incomplete" and sorted(req.missing_criteria) == ["embargo", "pgp"]
    world.ingest(reply(f"Re: [{req.id}] answers", "> 4. Accept the Embargo Policy that is "
                       "outlined above.\n\nWe accept it.\n"))
    req = world.request()
    assert (req.state, req.missing_criteria) == ("incomplete", ["pgp"])
    world.deliver()
    first, second = world.texts_to(APPLICANT)
    [pgp_words] = criteria.describe_missing(["pgp"], oci)
    [embargo_words] = criteria.describe_missing(["embargo"], oci)
    assert f"- {pgp_words}" in first and f"- {embargo_words}" in first
    assert f"- {pgp_words}" in second and embargo_words not in second


def seed_without(raw: bytes, drop: str) -> bytes:
    text = raw.decode()
    start = text.index(drop)
    end = text.find("\r\n> ", start + 1)
    return (text[:start] + text[end + 2:]).encode()


def test_a_second_request_from_the_applicant_adds_to_the_open_one(world: World):
    first = world.ingest(seed("join_oci.eml", drop="> 6. Be willing and able"))
    request_id = first.request_id
    assert world.request(request_id).missing_criteria == ["pgp"]
    # The applicant writes again from scratch (a new thread, the whole questionnaire), this
    # time with every answer and the key.
    again = seed("join_oci.eml").replace(b"<join-oci@seven-corp.example>",
                                         b"<join-oci-again@seven-corp.example>")
    head, _, body = again.partition(b"\r\n\r\n")
    head = head.replace(b"Content-Type: text/plain; charset=utf-8", b"")
    again = head.rstrip(b"\r\n") + b"\r\n" + with_key_attached(
        body.decode(), world.applicant.export(world.applicant_fpr))
    outcome = world.ingest(again)
    assert outcome.request_id == request_id
    with world.factory() as session:
        assert [r.id for r in session.scalars(select(JoinRequest))] == [request_id]
    req = world.request(request_id)
    assert req.state == "verifying" and req.missing_criteria == []
    assert req.fingerprint == world.applicant_fpr
    assert "request_again" in [e.action for e in req.events]
    world.deliver()
    plain = [world.text_of(r) for r in world.mails_to(APPLICANT)
             if r.message.get_content_type() != "multipart/encrypted"]
    assert sum(f"already open as {request_id}" in t for t in plain) == 1, plain


def test_a_request_for_another_list_is_a_request_of_its_own(world: World):
    world.ingest(seed("join_oci.eml"))
    outcome = world.ingest(seed("join_kubernetes.eml"))
    assert outcome.route == "join_request" and outcome.request_id == world.request_id(2)
    with world.factory() as session:
        lists = sorted(r.list_name for r in session.scalars(select(JoinRequest)))
    assert lists == ["k8s", "oci"]


def test_a_flood_of_requests_becomes_one_team_digest(world: World):
    """Past autoreply.team_digest_after requests within an hour the team gets a digest, not
    one mail each (found by the attack review: 40 requests paged the team 40 times)."""
    from seclistd import db
    from seclistd.workflows import notices

    threshold = world.settings.autoreply.team_digest_after
    total = threshold + 5
    for n in range(total):
        raw = seed("join_oci.eml").replace(b"acidburn@seven-corp.example",
                                           f"applicant{n}@distro{n}.example".encode())
        raw = raw.replace(b"CrashOverride will vouch", b"Nobody we know will vouch")
        assert world.ingest(raw).route == "join_request"
    with world.factory() as session:
        asked = session.scalars(select(Outbox.request_id).where(
            Outbox.kind == "request_team")).all()
    assert len(set(asked)) == threshold  # one notice each up to the threshold, then none
    with db.transaction(world.factory) as session:
        assert notices.sweep(session, world.now(), world.settings) == total - threshold
    world.deliver()
    [digest] = [t for t in world.texts_to(ALICE, world.alice)
                if f"these {total - threshold} notices were held" in t]
    assert all(f"applicant{n}@distro{n}.example" in digest for n in range(threshold, total))
