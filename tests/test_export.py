"""`seclistd cases export ID --format osv|csaf`: the advisory as an OSV record and a CSAF 2.0
document, each validated offline against the official JSON Schema.

Where the schemas come from (no network): the CSAF 2.0 schema and the FIRST CVSS v2/v3.x
schemas it references ship in the ``csaf`` package (``csaf/csaf/v20/schema/``); the OSV
schema (ossf/osv-schema ``validation/schema.json``, 1.6.x, Apache-2.0) ships in Google's
``osv`` package (``osv/osv-schema/validation/schema.json``), installed ``--no-deps`` by the
Makefile since only that file is used (its runtime dependencies are Google Cloud clients).
Neither package is imported: the files are found from the packages' locations.
"""

from __future__ import annotations

import copy
import datetime as dt
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from referencing import Registry, Resource

from seclistd import db
from seclistd.embargo_models import Announcement, AnnouncementRecipient
from seclistd.list_models import Member
from seclistd.models import Case
from tests.components import TEST_CLOCK, case_id, cli, report
from tests.conftest import Env, make_env

VECTOR = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations, f"{name} is not installed"
    return Path(list(spec.submodule_search_locations)[0])


def osv_schema() -> dict[str, Any]:
    return json.loads((_package_dir("osv") / "osv-schema" / "validation" / "schema.json")
                      .read_text())


def csaf_validator() -> jsonschema.protocols.Validator:
    base = _package_dir("csaf") / "csaf" / "v20" / "schema"
    schema = json.loads((base / "csaf.json").read_text())
    registry: Registry = Registry()
    for version in ("2.0", "3.0", "3.1"):
        sub = json.loads((base / "referenced" / f"cvss-v{version}.json").read_text())
        registry = registry.with_resource(f"https://www.first.org/cvss/cvss-v{version}.json",
                                          Resource.from_contents(sub))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, registry=registry, format_checker=cls.FORMAT_CHECKER)


def csaf_mandatory_failures(doc: dict[str, Any]) -> list[str]:
    """The CSAF 2.0 mandatory tests (spec 6.1) the ``csaf`` package runs, beside the schema."""
    from csaf.csaf.v20 import validate

    report_ = validate(doc, preset="basic")
    assert len(report_.results) > 30  # the schema and every mandatory test ran
    return [f"{r.id}: {[e.message for e in r.errors]}" for r in report_.results if not r.passed]


def errors(validator: jsonschema.protocols.Validator, doc: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(doc)]


def osv_errors(doc: dict[str, Any], prefix: str = "SEC") -> list[str]:
    """Errors under the official OSV schema, less its one rule a project outside osv.dev's
    registry cannot meet: the ID prefix must be registered (checked on its own below)."""
    schema = copy.deepcopy(osv_schema())
    pattern = schema["$defs"]["prefix"]["pattern"]
    assert pattern.startswith("^(")
    schema["$defs"]["prefix"]["pattern"] = f"^({prefix}|" + pattern[2:]
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return errors(cls(schema, format_checker=cls.FORMAT_CHECKER), doc)


def export_env(tmp_path: Path, *, ecosystem: bool = True) -> Env:
    env = make_env(tmp_path, extra='\n[[lists]]\nname = "distros"\n'
                                   'address = "distros@example.org"\n')
    if ecosystem:
        text = env.path.read_text().replace(
            'timezone = "America/New_York"\n',
            'timezone = "America/New_York"\npackage = "example.org/widget"\n'
            'ecosystem = "Go"\nurl = "https://widget.example.org"\n', 1)
        env.path.write_text(text)
    return env


def confirmed_case(env: Env) -> str:
    """A confirmed case with CVSS, affected and fixed versions, a credit wish, a workaround,
    and a notice whose list members stated each vendor status (one said nothing)."""
    assert cli(env.path, "ingest", "-", input=report(1)).returncode == 0
    cid = case_id(1)
    assert cli(env.path, "cases", "ack", cid, "-m", "Thanks, looking.").returncode == 0
    done = cli(env.path, "cases", "confirm", cid, "--versions", ">= 1.2.0, < 1.4.3",
               "--cvss", VECTOR)
    assert done.returncode == 0, done.stderr
    now = TEST_CLOCK.now()
    with db.transaction(env.factory) as session:
        case = session.get(Case, cid)
        assert case is not None
        case.fixed_version = "1.4.3"
        case.workaround = "Disable the config parser's include directive."
        case.credit, case.credit_github = "Jane Doe", "janedoe"
        session.add(Announcement(case_id=cid, list_name="distros", until=now
                                 + dt.timedelta(days=5), text="Details for distributors.",
                                 created_at=now, created_by="alice@example.org"))
        session.flush()
        wishes = [("debian", "Debian", "affected", "Fix in unstable, backports queued."),
                  ("suse", "SUSE", "not-affected", "We ship 1.1, before the bug."),
                  ("alma", "AlmaLinux", "unknown", ""),
                  ("gentoo", "Gentoo", None, None)]
        for n, (who, org, status, statement) in enumerate(wishes):
            member = Member(list_name="distros", email=f"security@{who}.example",
                            organization=org, state="active", joined_at=now,
                            bounce_token=f"b{n}")
            session.add(member)
            session.flush()
            session.add(AnnouncementRecipient(
                case_id=cid, member_id=member.id, email=member.email, role="member",
                token=f"tok{n}", status="sent", vendor_status=status, statement=statement))
        session.add(AnnouncementRecipient(case_id=cid, email="alice@example.org", role="team",
                                          token="tokteam", status="sent",
                                          vendor_status="affected", statement="team row"))
    return cid


def export(env: Env, cid: str, fmt: str) -> dict[str, Any]:
    out = cli(env.path, "cases", "export", cid, "--format", fmt)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_osv_record_of_a_confirmed_case_is_valid(tmp_path: Path):
    env = export_env(tmp_path)
    cid = confirmed_case(env)
    doc = export(env, cid, "osv")
    assert osv_errors(doc) == []
    assert doc["id"] == cid and doc["summary"] == "Vulnerability number 1"
    assert doc["severity"] == [{"type": "CVSS_V3", "score": VECTOR}]
    [affected] = doc["affected"]
    assert affected["package"] == {"ecosystem": "Go", "name": "example.org/widget"}
    assert affected["ranges"] == [{"type": "SEMVER", "events": [{"introduced": "1.2.0"},
                                                                {"fixed": "1.4.3"}]}]
    assert doc["credits"] == [{"name": "Jane Doe (GitHub @janedoe)", "type": "FINDER",
                               "contact": ["https://github.com/janedoe"]}]
    assert "Disable the config parser" in doc["details"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", doc["modified"])
    assert "published" not in doc  # not disclosed yet
    # The official schema as published refuses only the ID: "SEC" is no prefix registered
    # with osv.dev (a project publishing there registers its case_prefix).
    official = jsonschema.Draft202012Validator(osv_schema())
    assert [list(e.absolute_path) for e in official.iter_errors(doc)] == [["id"]]


def test_csaf_document_is_valid_and_maps_vendor_status(tmp_path: Path):
    env = export_env(tmp_path)
    cid = confirmed_case(env)
    doc = export(env, cid, "csaf")
    assert errors(csaf_validator(), doc) == []
    assert csaf_mandatory_failures(doc) == []
    document = doc["document"]
    assert document["category"] == "csaf_security_advisory"
    assert document["tracking"]["id"] == cid and document["tracking"]["status"] == "draft"
    assert document["distribution"]["tlp"]["label"] == "AMBER"
    assert document["publisher"]["namespace"] == "https://widget.example.org"
    [vuln] = doc["vulnerabilities"]
    names = {}

    def walk(branches: list[dict[str, Any]]) -> None:
        for b in branches:
            if "product" in b:
                names[b["product"]["product_id"]] = b["product"]["name"]
            walk(b.get("branches", []))

    walk(doc["product_tree"]["branches"])
    status = {group: sorted(names[p] for p in ids)
              for group, ids in vuln["product_status"].items()}
    assert status == {
        "known_affected": ["Example example.org/widget >= 1.2.0, < 1.4.3",
                           "example.org/widget as shipped by Debian"],
        "fixed": ["Example example.org/widget 1.4.3"],
        "known_not_affected": ["example.org/widget as shipped by SUSE"],
        "under_investigation": ["example.org/widget as shipped by AlmaLinux"],
    }
    assert not any("Gentoo" in n for n in names.values())  # said nothing: no claim
    assert not any("@" in n for n in names.values())  # organisations, never addresses
    assert [t["details"] for t in vuln["threats"]] == ["Fix in unstable, backports queued.",
                                                       "We ship 1.1, before the bug."]
    [score] = vuln["scores"]
    assert score["cvss_v3"]["vectorString"] == VECTOR and score["cvss_v3"]["baseScore"] == 9.8
    assert {r["category"] for r in vuln["remediations"]} == {"vendor_fix", "workaround"}
    assert vuln["acknowledgments"] == [{"names": ["Jane Doe (GitHub @janedoe)"],
                                        "urls": ["https://github.com/janedoe"]}]


def test_disclosed_case_is_final_and_published(tmp_path: Path):
    env = export_env(tmp_path)
    cid = confirmed_case(env)
    disclosed = TEST_CLOCK.now() + dt.timedelta(hours=1)
    with db.transaction(env.factory) as session:
        case = session.get(Case, cid)
        assert case is not None
        case.state, case.disclosed_at = "disclosed", disclosed
    stamp = disclosed.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    osv = export(env, cid, "osv")
    assert osv_errors(osv) == [] and osv["published"] == stamp
    csaf = export(env, cid, "csaf")
    assert errors(csaf_validator(), csaf) == [] and csaf_mandatory_failures(csaf) == []
    tracking = csaf["document"]["tracking"]
    assert (tracking["status"], tracking["version"]) == ("final", "1")
    assert tracking["initial_release_date"] == stamp
    assert csaf["document"]["distribution"]["tlp"]["label"] == "WHITE"


def test_output_file_and_no_ecosystem(tmp_path: Path):
    env = export_env(tmp_path, ecosystem=False)
    cid = confirmed_case(env)
    target = tmp_path / "advisory.json"
    out = cli(env.path, "cases", "export", cid, "--format", "osv", "--output", str(target))
    assert out.returncode == 0 and out.stdout == ""
    assert "project.ecosystem is not set" in out.stderr
    doc = json.loads(target.read_text())
    assert osv_errors(doc) == [] and "package" not in doc["affected"][0]
    assert doc["affected"][0]["database_specific"]["package"] == "Example"
    assert target.stat().st_mode & 0o777 == 0o600
    csaf = export(env, cid, "csaf")
    assert errors(csaf_validator(), csaf) == []
    assert csaf["document"]["publisher"]["namespace"] == "https://example.org"


@pytest.mark.parametrize("fmt", ["osv", "csaf"])
def test_unconfirmed_unknown_and_bad_format(tmp_path: Path, fmt: str):
    env = export_env(tmp_path)
    assert cli(env.path, "ingest", "-", input=report(1)).returncode == 0
    refused = cli(env.path, "cases", "export", case_id(1), "--format", fmt)
    assert refused.returncode == 1 and refused.stdout == ""
    assert len(refused.stderr.strip().splitlines()) == 1
    assert "is new: an advisory is exported from a confirmed case" in refused.stderr
    unknown = cli(env.path, "cases", "export", case_id(9), "--format", fmt)
    assert unknown.returncode == 1 and f"no case {case_id(9)}" in unknown.stderr
    bad = cli(env.path, "cases", "export", case_id(1), "--format", "cyclonedx")
    assert bad.returncode == 2 and "unknown format 'cyclonedx'" in bad.stderr
    assert "Traceback" not in refused.stderr + unknown.stderr + bad.stderr
