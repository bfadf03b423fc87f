"""`seclistd members`: the Kubernetes table imports completely and a messy one says what it
skipped and why, export → import round-trips, every change is an event, members hear of
removals and suspensions (with the reason) and the team too, and a key file is judged like
an offered key (public material only, nothing compressed) before it is pinned."""

from __future__ import annotations

import datetime as dt
import json
import zlib
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from tests.components import MACHINE_CLOCK, Sink, cli
from tests.conftest import Env, make_env
from tests.pgp import Home, new_home

DATA = Path(__file__).parent / "data"
LISTS = """
[[lists]]
name = "distributors"
address = "distributors@example.org"
criteria = "kubernetes"

[[lists]]
name = "oci-distributors"
address = "oci-distributors@example.org"
criteria = "oci"
"""


@pytest.fixture
def lenv(tmp_path: Path, sink: Sink) -> Env:
    """A migrated database with two [[lists]], relaying to the sink."""
    return make_env(tmp_path, relay_port=sink.port, extra=LISTS)


def run_json(env: Env, *args: str, **kwargs: object) -> object:
    done = cli(env.path, "--json", *args, **kwargs)  # type: ignore[arg-type]
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def one_line_failure(done: object, code: int) -> str:
    assert done.returncode == code, (done.stdout, done.stderr)  # type: ignore[attr-defined]
    lines = done.stderr.strip().splitlines()  # type: ignore[attr-defined]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr  # type: ignore
    return lines[0]


# --- import and export --------------------------------------------------------------------

def test_kubernetes_table_imports_completely(lenv: Env):
    report = run_json(lenv, "members", "import", str(DATA / "k8s_members.md"))
    assert report["skipped"] == []
    assert len(report["added"]) == 27
    listed = run_json(lenv, "members", "list")
    by_email = {m["email"]: m for m in listed}
    assert len(by_email) == 27
    # The ragged row (no closing pipe) and a tab-separated header are read like the rest.
    assert by_email["security@platform9.com"]["organization"] == "Platform9"
    assert by_email["security@gravitational.com"]["organization"] == "Gravitational"
    assert by_email["kubernetes-security@service.aliyun.com"]["organization"] == "Aliyun"
    assert by_email["bphilips@redhat.com"] == {
        "email": "bphilips@redhat.com", "organization": "Kubernetes PST", "fingerprint": None,
        "state": "active", "list": "distributors", "key_expires": None}
    # Nothing was mailed: an import moves a roster in, it subscribes nobody.
    assert run_json(lenv, "outbox", "list") == []
    # Only the list named got them.
    assert run_json(lenv, "members", "list", "--list", "oci-distributors") == []
    again = run_json(lenv, "members", "import", str(DATA / "k8s_members.md"))
    assert again["added"] == [] and len(again["skipped"]) == 27
    assert {s["reason"] for s in again["skipped"]} == {"already a member (active)"}


MESSY = """\
Our distributors, as of this year. Write to security@example.org to join.

| Organisation | E-mail | Notes |
|:---|---|---|
| Example Linux	|	security@example-linux.org | since 2019 |
| Tabby OS | <security@tabby.example> |

| Linked | [sec@linked.example](mailto:sec@linked.example) | blank line above |
| Nobody | not-an-address |
| | orphan@example.net |
| Dupe Corp | SECURITY@example-linux.org |
| Old Corp | old@old.example |
| Present Corp | present@present.example |
a line without pipes: stray@example.net Stray Inc
| Pipe \\| Co | pipe@pipe.example |
| Ragged | ragged@ragged.example

Some text after the table, not part of it.

## Another section

| Email | Organization |
| ----- | ------------ |
| second@second.example | Second Table |
"""


def test_messy_table_reports_what_it_skipped_and_why(lenv: Env, tmp_path: Path):
    assert cli(lenv.path, "members", "add", "present@present.example", "--organization",
               "Present Corp").returncode == 0
    assert cli(lenv.path, "members", "add", "old@old.example", "--organization",
               "Old Corp").returncode == 0
    assert cli(lenv.path, "members", "remove", "old@old.example", "--reason",
               "left").returncode == 0
    table = tmp_path / "messy.md"
    table.write_text(MESSY)
    report = run_json(lenv, "members", "import", str(table))
    added = {m["email"]: m["organization"] for m in report["added"]}
    assert added == {"security@example-linux.org": "Example Linux",
                     "security@tabby.example": "Tabby OS",
                     "sec@linked.example": "Linked",
                     "pipe@pipe.example": "Pipe | Co",
                     "ragged@ragged.example": "Ragged",
                     "second@second.example": "Second Table"}
    skipped = [(s["line"], s["reason"]) for s in report["skipped"]]
    assert skipped == [
        (9, "bad address: not-an-address has no local part and domain"),
        (10, "missing organisation"),
        (11, "duplicate of line 5"),
        (12, "removed on " + skipped[3][1][len("removed on "):]),
        (13, "already a member (active)"),
        (14, "not a table row (no | between the columns)"),
    ]
    assert skipped[3][1].endswith("`seclistd members add old@old.example` adds it again")
    # The text report says the same, a line per skipped row and a total.
    text = cli(lenv.path, "members", "import", str(table))
    assert text.returncode == 0
    assert "skipped line 10: missing organisation: | | orphan@example.net |" in text.stdout
    assert text.stdout.strip().endswith("distributors: 0 added, 12 skipped")


def test_import_refuses_a_file_without_a_table(lenv: Env, tmp_path: Path):
    prose = tmp_path / "prose.md"
    prose.write_text("# Members\n\nalice@example.net, Example\n")
    line = one_line_failure(cli(lenv.path, "members", "import", str(prose)), 1)
    assert "no members table found" in line and "| Email | Organization |" in line
    binary = tmp_path / "members.md"
    binary.write_bytes(b"| Email | Organization |\n| \xff\xfe | x |\n")
    assert "is not UTF-8 text" in one_line_failure(
        cli(lenv.path, "members", "import", str(binary)), 1)
    missing = one_line_failure(cli(lenv.path, "members", "import", str(tmp_path / "no.md")), 1)
    assert "cannot read it" in missing


def test_our_own_addresses_are_never_members(lenv: Env, tmp_path: Path):
    """The security address, a list's address or one of their sub-addresses (a bounce
    return path) as a member would mail embargoed notices to ourselves: refused by `add`,
    skipped by `import` with the reason (found by the attack review: all were added)."""
    for own in ("security@example.org", "Distributors@Example.org",
                "security+bounce-0123456789abcdef0123@example.org"):
        line = one_line_failure(cli(lenv.path, "members", "add", own, "--organization",
                                    "Us"), 1)
        assert "is our own address" in line, line
    table = tmp_path / "members.md"
    table.write_text("| Email | Organization |\n| --- | --- |\n"
                     "| security@example.org | Us |\n"
                     "| oci-distributors+x@example.org | Us |\n"
                     "| security@distro.example | Distro |\n")
    done = cli(lenv.path, "members", "import", str(table), "--list", "distributors")
    assert done.returncode == 0, done.stderr
    assert "line 3: our own address (security@example.org)" in done.stdout
    assert "line 4: our own address (oci-distributors@example.org)" in done.stdout
    assert "1 added, 2 skipped" in done.stdout
    assert [m["email"] for m in run_json(lenv, "members", "list")] == [
        "security@distro.example"]


def test_export_then_import_round_trips(lenv: Env, tmp_path: Path, sink: Sink):
    run_json(lenv, "members", "import", str(DATA / "k8s_members.md"))
    assert cli(lenv.path, "members", "suspend", "security@rancher.com", "--reason",
               "bounces").returncode == 0
    assert cli(lenv.path, "members", "remove", "me@jessfraz.com").returncode == 0
    exported = cli(lenv.path, "members", "export", "--format", "markdown")
    assert exported.returncode == 0
    lines = exported.stdout.splitlines()
    assert lines[:2] == ["| Email | Organization |", "| --- | --- |"]
    emails = [line.split(" | ")[0].lstrip("| ") for line in lines[2:]]
    assert emails == sorted(emails) and len(emails) == 26  # removed ones are not published
    assert "| security@rancher.com | Rancher |" in lines  # suspended ones are

    fresh_dir = tmp_path / "fresh"
    fresh_dir.mkdir()
    fresh = make_env(fresh_dir, relay_port=sink.port, extra=LISTS)
    published = fresh_dir / "published.md"
    published.write_text(exported.stdout)
    report = run_json(fresh, "members", "import", str(published))
    assert report["skipped"] == []
    before = {(m["email"], m["organization"]) for m in run_json(lenv, "members", "list")
              if m["state"] != "removed"}
    after = {(m["email"], m["organization"]) for m in run_json(fresh, "members", "list")}
    assert after == before and len(after) == 26
    again = cli(fresh.path, "members", "export", "--format", "markdown")
    assert again.stdout == exported.stdout

    # CSV and JSON carry the contract fields.
    as_json = json.loads(cli(lenv.path, "members", "export", "--format", "json").stdout)
    assert len(as_json) == 26
    assert set(as_json[0]) == {"email", "organization", "fingerprint", "state", "list",
                               "key_expires"}
    assert {m["state"] for m in as_json} == {"active", "suspended"}
    everyone = json.loads(cli(lenv.path, "members", "export", "--format", "json",
                              "--include-removed").stdout)
    assert len(everyone) == 27
    csv_lines = cli(lenv.path, "members", "export", "--format", "csv").stdout.splitlines()
    assert csv_lines[0] == "email,organization,fingerprint,state,list,key_expires"
    assert "security@rancher.com,Rancher,,suspended,distributors," in csv_lines
    assert json.loads(cli(lenv.path, "--json", "members", "export").stdout) == as_json
    clash = cli(lenv.path, "--json", "members", "export", "--format", "csv")
    assert "drop --json or use --format json" in one_line_failure(clash, 2)


# --- changes, their events and their mail -------------------------------------------------

def body_of(raw: bytes) -> str:
    msg = message_from_bytes(raw, policy=policy.default)
    return msg.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]


def test_each_change_is_an_event_and_the_member_is_told(lenv: Env, sink: Sink):
    added = run_json(lenv, "members", "add", "security@distro.example", "--organization",
                     "Distro")
    assert added["state"] == "active" and added["fingerprint"] is None
    suspended = run_json(lenv, "members", "suspend", "security@distro.example", "--reason",
                         "our mail to this address bounced five times")
    assert suspended["state"] == "suspended"
    refused = cli(lenv.path, "members", "suspend", "security@distro.example", "--reason", "x")
    assert one_line_failure(refused, 1) == (
        "seclistd: member security@distro.example is suspended; suspend is not possible "
        "(possible: remove, resume)")
    assert run_json(lenv, "members", "resume", "security@distro.example")["state"] == "active"
    again = cli(lenv.path, "members", "resume", "security@distro.example")
    assert "(possible: remove, suspend)" in one_line_failure(again, 1)
    removed = run_json(lenv, "members", "remove", "security@distro.example", "--reason",
                       "The distribution no longer ships the project.")
    assert removed["state"] == "removed"

    shown = run_json(lenv, "members", "show", "security@distro.example")
    assert [(e["action"], e["from_state"], e["to_state"]) for e in shown["events"]] == [
        ("add", None, "active"), ("suspend", "active", "suspended"),
        ("resume", "suspended", "active"), ("remove", "active", "removed")]
    assert shown["events"][1]["detail"] == "our mail to this address bounced five times"
    assert all(e["actor"].endswith("(cli)") for e in shown["events"])
    assert all(dt.datetime.fromisoformat(e["at"]).utcoffset() is not None
               for e in shown["events"])
    assert shown["reason"] == "The distribution no longer ships the project."

    assert cli(lenv.path, "run", "--once").returncode == 0
    mails = sink.to("security@distro.example")
    subjects = [m.message["Subject"] for m in mails]
    assert subjects == ["distributors: you are on the list",
                        "distributors: your membership is suspended",
                        "distributors: your membership is active again",
                        "distributors: you were removed from the list"]
    # The member's own return path, so that a bounce names it.
    assert all(m.mail_from.startswith("security+bounce-") for m in mails)
    suspension, removal = body_of(mails[1].raw), body_of(mails[3].raw)
    assert "our mail to this address bounced five times" in suspension
    assert "no notice of an embargoed issue is sent" in suspension
    assert "The distribution no longer ships the project." in removal
    team = [m.message["Subject"] for m in sink.to("alice@example.org")]
    assert team == ["distributors: member security@distro.example suspended",
                    "distributors: member security@distro.example removed"]
    assert "The distribution no longer ships the project." in body_of(
        sink.to("alice@example.org")[1].raw)

    # Removed members can be added again; that is an event too.
    readded = run_json(lenv, "members", "add", "security@distro.example", "--organization",
                       "Distro Two")
    assert readded["state"] == "active" and readded["organization"] == "Distro Two"
    events = run_json(lenv, "members", "show", "security@distro.example")["events"]
    assert events[-1]["action"] == "readd"


def test_operator_mistakes_get_one_line(lenv: Env, tmp_path: Path, sink: Sink):
    unknown = cli(lenv.path, "members", "show", "nobody@example.net")
    assert one_line_failure(unknown, 1) == ("seclistd: nobody@example.net is not a member of "
                                            "distributors; `seclistd members list` shows "
                                            "the members")
    assert "not a member" in one_line_failure(
        cli(lenv.path, "members", "remove", "nobody@example.net"), 1)
    assert "is not a mail address" in one_line_failure(
        cli(lenv.path, "members", "add", "nobody", "--organization", "X"), 2)
    assert "--organization is empty" in one_line_failure(
        cli(lenv.path, "members", "add", "a@b.example", "--organization", "  "), 2)
    assert "--reason" in one_line_failure(
        cli(lenv.path, "members", "suspend", "a@b.example"), 2)
    assert "unknown state 'gone', expected one of active, suspended, removed" in (
        one_line_failure(cli(lenv.path, "members", "list", "--state", "gone"), 2))
    assert "no list 'nope'" in one_line_failure(
        cli(lenv.path, "members", "list", "--list", "nope"), 2)
    assert cli(lenv.path, "members", "add", "a@b.example", "--organization",
               "B").returncode == 0
    assert "already a member of distributors (active)" in one_line_failure(
        cli(lenv.path, "members", "add", "a@b.example", "--organization", "B"), 1)
    # The same address may be on another list.
    other = run_json(lenv, "members", "add", "a@b.example", "--organization", "B", "--list",
                     "oci-distributors")
    assert other["list"] == "oci-distributors"

    helped = cli(lenv.path, "members", "list", "--help")
    assert "active, suspended, removed" in helped.stdout
    for action in ("list", "show", "add", "remove", "suspend", "resume", "import", "export"):
        shown = cli(lenv.path, "members", action, "--help")
        assert shown.returncode == 0
        assert shown.stdout.split("\n\n")[1].strip(), action  # a description

    bare_dir = tmp_path / "bare"
    bare_dir.mkdir()
    bare = make_env(bare_dir, relay_port=sink.port)
    for args in (("list",), ("show", "a@b.example"), ("export",)):
        line = one_line_failure(cli(bare.path, "members", *args), 2)
        assert "add a [[lists]] block" in line


# --- keys ---------------------------------------------------------------------------------

@pytest.fixture
def homes(tmp_path: Path, sink: Sink):
    """The member's own GnuPG home and seclistd's (short paths), and the env using it."""
    member, project = new_home(), new_home()
    env = make_env(tmp_path, relay_port=sink.port, extra=LISTS, gnupg_home=project.path)
    yield env, member
    member.close()
    project.close()


def test_key_is_pinned_and_removal_mail_is_encrypted_to_it(homes: tuple[Env, Home],
                                                           tmp_path: Path, sink: Sink):
    env, member = homes
    fpr = member.generate("Distro Security", "security@distro.example", expire="1y")
    key_file = tmp_path / "key.asc"
    key_file.write_bytes(member.export(fpr))
    added = run_json(env, "members", "add", "security@distro.example", "--organization",
                     "Distro", "--key", str(key_file), at=MACHINE_CLOCK)
    assert added["fingerprint"] == fpr and added["warnings"] == []
    expires = dt.datetime.fromisoformat(added["key_expires"])
    assert expires.utcoffset() is not None
    assert expires - dt.datetime.now(dt.UTC) > dt.timedelta(days=300)
    shown = run_json(env, "members", "show", "security@distro.example", at=MACHINE_CLOCK)
    assert f"key {fpr} pinned" in shown["events"][0]["detail"]

    assert cli(env.path, "members", "remove", "security@distro.example", "--reason",
               "Repeated leaks of embargoed details.", at=MACHINE_CLOCK).returncode == 0
    assert cli(env.path, "run", "--once", at=MACHINE_CLOCK).returncode == 0
    removal = sink.to("security@distro.example")[-1]
    assert b"Repeated leaks" not in removal.raw
    armored = removal.message.get_payload()[1].get_payload(decode=True)
    ok, plain = member.decrypt(armored)
    assert ok
    assert "Repeated leaks of embargoed details." in body_of(plain)


def test_key_for_another_address_is_pinned_with_a_warning(homes: tuple[Env, Home],
                                                          tmp_path: Path):
    env, member = homes
    fpr = member.generate("Pat Packager", "pat@distro.example")
    key_file = tmp_path / "pat.asc"
    key_file.write_bytes(member.export(fpr))
    done = cli(env.path, "--json", "members", "add", "security@distro.example",
               "--organization", "Distro", "--key", str(key_file), at=MACHINE_CLOCK)
    assert done.returncode == 0
    assert done.stderr.strip() == (f"seclistd: warning: key {fpr} has no user ID for "
                                   "security@distro.example (its addresses: "
                                   "pat@distro.example); pinned anyway, as a list alias often "
                                   "uses another key")
    doc = json.loads(done.stdout)
    assert doc["fingerprint"] == fpr and len(doc["warnings"]) == 1
    shown = run_json(env, "members", "show", "security@distro.example", at=MACHINE_CLOCK)
    assert "has no user ID for security@distro.example" in shown["events"][0]["detail"]


def test_keys_with_secret_parts_compressed_packets_or_revoked_are_refused(
        homes: tuple[Env, Home], tmp_path: Path):
    env, member = homes
    fpr = member.generate("Distro Security", "security@distro.example")
    public = member.run("--export", fpr)

    secret = tmp_path / "secret.asc"
    secret.write_bytes(member.run("--armor", "--export-secret-keys", fpr))
    binary_secret = tmp_path / "secret.gpg"
    binary_secret.write_bytes(member.run("--export-secret-keys", fpr))
    # A public key followed by a compressed data packet (tag 8, new format): inside gpg such
    # a packet may expand without bound.
    deflated = zlib.compress(b"\0" * 100_000)[2:-4]
    packet = bytes([0xC0 | 8, 0xFF]) + (1 + len(deflated)).to_bytes(4, "big") + b"\x01" + (
        deflated)
    compressed = tmp_path / "compressed.gpg"
    compressed.write_bytes(public + packet)
    two = tmp_path / "two.asc"
    other = member.generate("Other", "other@distro.example")
    two.write_bytes(member.run("--armor", "--export", fpr, other))
    member.run("--import", data=member.revocation(fpr))
    revoked = tmp_path / "revoked.asc"
    revoked.write_bytes(member.export(fpr))

    expected = {secret: "secret key material", binary_secret: "secret key material",
                compressed: "compressed data packet", two: "holds 2 keys, expected exactly one",
                revoked: "is revoked"}
    for path, why in expected.items():
        done = cli(env.path, "members", "add", "security@distro.example", "--organization",
                   "Distro", "--key", str(path), at=MACHINE_CLOCK)
        line = one_line_failure(done, 1)
        assert line.startswith(f"seclistd: {path}: ") and why in line, line
    # Nothing was added, and no secret key reached seclistd's keyrings.
    assert run_json(env, "members", "list", at=MACHINE_CLOCK) == []
    listed = run_json(env, "keys", "list", at=MACHINE_CLOCK)
    assert not any(k["secret"] for k in listed)


def test_table_text_is_cleaned_and_long_lines_are_not_parsed():
    from seclistd.workflows import member_table

    text = ("| Email | Organization |\n|---|---|\n"
            "| a@evil.example | Good\u202eCorp\x1b[2J |\n"
            "| " + "b" * 5000 + "@long.example | Long |\n")
    parsed = member_table.parse(text)
    assert [(r.email, r.organization) for r in parsed.rows] == [("a@evil.example",
                                                                 "Good Corp [2J")]
    assert [(s.line, s.reason) for s in parsed.skipped] == [
        (4, "the line is over 2000 characters")]
