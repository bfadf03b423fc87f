"""A case as a machine-readable advisory: an OSV record and a CSAF 2.0 document
(`seclistd cases export ID --format osv|csaf`; issue 10 item 7).

Pure functions of a case, its events and its announcement's recipients: nothing is written
and nothing is sent. What they take from the configuration: ``project.name`` (the vendor),
``project.package`` (the affected package, default the name), ``project.ecosystem`` (its
OSV ecosystem; empty: the OSV record names no package) and ``project.url`` (the CSAF
publisher namespace, default ``https://`` + the security address's domain).

Which cases: one the team confirmed (``confirmed``, ``embargoed``, ``disclosed``, or closed
as ``fixed``). A case never confirmed (``new``, ``acknowledged``, or closed as rejected,
duplicate or withdrawn) has no affected versions or severity worth publishing: it is refused
with one line (``NotExportable``) rather than exported half empty.

OSV (schema 1.6): ``id`` is the case ID. osv.dev only imports records whose ID prefix is
registered with it (the schema lists them); a project that publishes there registers its
``case_prefix``. ``affected_versions`` is read as comparisons (``>= 1.2.0, < 1.4.3``) and
bare versions: ``>=`` is an ``introduced`` event (``0`` when none), ``<`` or the fixing
release a ``fixed`` one, ``<=`` a ``last_affected`` one (only without a fix: OSV forbids
both), bare versions go to ``versions``; the text itself stays in ``database_specific``.

CSAF 2.0, category ``csaf_security_advisory``: the project speaks about a vulnerability in
its own product and says which versions are affected and fixed, which is what that profile
is for (``csaf_base`` would drop the checks that a product tree, notes and product status
are there; ``csaf_vex`` demands an impact statement for every not-affected product, which
distributors do not always give). The product tree holds the affected version range, the
fixed version and, for each list member whose distribution stated a status on the notice
(``X-STATUS``), the package as that distribution ships it (named by its organisation, never
its address). The mapping: ``affected`` → ``known_affected``, ``not-affected`` →
``known_not_affected``, ``unknown`` → ``under_investigation``; a member who said nothing
is left out (we know nothing of its distribution). A distribution's statement is a
``threats`` entry of category ``impact`` on its product. Until the case is disclosed the
document is a ``draft`` (version 0) marked TLP:AMBER with the embargo's end; once disclosed it
is ``final`` (version 1) and TLP:WHITE.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from seclistd.config import Settings
from seclistd.embargo_models import AnnouncementRecipient
from seclistd.list_models import Member
from seclistd.models import Case, Event
from seclistd.workflows import states

FORMATS = ("osv", "csaf")
OSV_SCHEMA_VERSION = "1.6.0"

# States whose case the team confirmed: an advisory exists for them.
EXPORTABLE = frozenset({states.CONFIRMED, states.EMBARGOED, states.DISCLOSED})

# X-STATUS of a distribution -> CSAF product status group.
VENDOR_STATUS_TO_CSAF = {"affected": "known_affected", "not-affected": "known_not_affected",
                         "unknown": "under_investigation"}

# One comparison or bare version in affected_versions; the text is capped before matching.
_VERSION = re.compile(r"(<=|>=|<|>|=)?\s*[vV]?([0-9][0-9A-Za-z.+\-]*)")
_SEMVER = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.\-]+)?(\+[0-9A-Za-z.\-]+)?")


class NotExportable(Exception):
    """The case cannot be exported; the text is the one line for the operator."""


def check_exportable(case: Case) -> None:
    if case.state in EXPORTABLE or (case.state == states.CLOSED and case.resolution == "fixed"):
        return
    what = case.state + (f" ({case.resolution})" if case.resolution else "")
    raise NotExportable(
        f"{case.id} is {what}: an advisory is exported from a confirmed case, expected one "
        f"the team confirmed (`seclistd cases confirm {case.id} --versions V --cvss VECTOR`)")


def export(session: Session, now: dt.datetime, settings: Settings, case_id: str,
           fmt: str) -> dict[str, Any] | None:
    """The document for ``fmt`` ("osv" or "csaf"); None for an unknown case; NotExportable
    for a case that was never confirmed."""
    case = session.get(Case, case_id)
    if case is None:
        return None
    check_exportable(case)
    last_event = session.scalar(select(func.max(Event.at)).where(Event.case_id == case.id))
    modified = _utc(last_event) if last_event is not None else _utc(now)
    if fmt == "osv":
        return osv(case, settings, modified)
    statuses = distribution_statuses(session, case.id)
    return csaf(case, settings, now, modified, statuses)


def distribution_statuses(session: Session, case_id: str) -> list[dict[str, str]]:
    """Each list member's stated vendor status on the case's notice, oldest copy first:
    ``organization``, ``vendor_status``, ``statement``."""
    rows = session.execute(
        select(AnnouncementRecipient, Member.organization)
        .outerjoin(Member, Member.id == AnnouncementRecipient.member_id)
        .where(AnnouncementRecipient.case_id == case_id,
               AnnouncementRecipient.role == "member",
               AnnouncementRecipient.vendor_status.is_not(None))
        .order_by(AnnouncementRecipient.id)).all()
    out = []
    for rec, organization in rows:
        if rec.vendor_status not in VENDOR_STATUS_TO_CSAF:
            continue
        org = (organization or "").strip() or rec.email.rpartition("@")[2]
        out.append({"organization": org, "vendor_status": rec.vendor_status,
                    "statement": (rec.statement or "").strip()})
    return out


# --- shared --------------------------------------------------------------------------------

def _utc(when: dt.datetime) -> dt.datetime:
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC).replace(microsecond=0)


def _stamp(when: dt.datetime) -> str:
    return _utc(when).strftime("%Y-%m-%dT%H:%M:%SZ")


def package_name(settings: Settings) -> str:
    return settings.project.package or settings.project.name


def publisher_url(settings: Settings) -> str:
    return settings.project.url or f"https://{settings.project.domain}"


def _credit(case: Case, settings: Settings) -> tuple[str, list[str]]:
    """(the credit line, contact URLs): as the disclosure mail credits."""
    from seclistd.workflows.lifecycle import credit_for

    line, _how = credit_for(case, settings)
    contact = [f"https://github.com/{case.credit_github}"] if case.credit_github and line else []
    return line, contact


def parse_versions(text: str | None, fixed: str | None) -> dict[str, Any]:
    """``affected_versions`` (and the fixing release) as OSV events and explicit versions."""
    introduced: list[str] = []
    fixed_at: list[str] = [fixed.strip().lstrip("vV")] if fixed and fixed.strip() else []
    last: list[str] = []
    listed: list[str] = []
    for op, version in _VERSION.findall((text or "")[:500]):
        if op == ">=":
            introduced.append(version)
        elif op == "<":
            if not fixed_at:
                fixed_at.append(version)
        elif op == "<=":
            last.append(version)
        elif op in ("", "="):
            listed.append(version)
        # ">" has no OSV event (introduced is inclusive): the text keeps it.
    events: list[dict[str, str]] = [{"introduced": v} for v in introduced or ["0"]]
    if fixed_at:
        events += [{"fixed": fixed_at[0]}]
    elif last:
        events += [{"last_affected": last[-1]}]
    every = [v for e in events for v in e.values() if v != "0"] + listed
    kind = "SEMVER" if all(_SEMVER.fullmatch(v) for v in every) else "ECOSYSTEM"
    has_bounds = bool(fixed_at or last or introduced)
    return {"type": kind, "events": events if has_bounds or not listed else [],
            "versions": listed}


# --- OSV -----------------------------------------------------------------------------------

def osv(case: Case, settings: Settings, modified: dt.datetime) -> dict[str, Any]:
    parsed = parse_versions(case.affected_versions, case.fixed_version)
    affected: dict[str, Any] = {}
    if settings.project.ecosystem:
        affected["package"] = {"ecosystem": settings.project.ecosystem,
                               "name": package_name(settings)}
    if parsed["events"]:
        affected["ranges"] = [{"type": parsed["type"], "events": parsed["events"]}]
    if parsed["versions"]:
        affected["versions"] = parsed["versions"]
    affected["database_specific"] = {
        "package": package_name(settings),
        "affected_versions": case.affected_versions or "",
        "fixed_version": case.fixed_version or ""}
    doc: dict[str, Any] = {
        "schema_version": OSV_SCHEMA_VERSION,
        "id": case.id,
        "modified": _stamp(modified),
        "summary": case.subject[:200],
        "details": _details(case),
        "affected": [affected],
    }
    if case.disclosed_at is not None:
        doc["published"] = _stamp(case.disclosed_at)
    severity = _osv_severity(case.severity)
    if severity:
        doc["severity"] = [severity]
    line, contact = _credit(case, settings)
    if line:
        doc["credits"] = [{"name": line, "type": "FINDER", **({"contact": contact}
                                                              if contact else {})}]
    doc["database_specific"] = {"source": settings.project.name, "state": case.state,
                                "embargo_until": _stamp(case.embargo_until)
                                if case.embargo_until else None}
    return doc


def _details(case: Case) -> str:
    parts = [case.subject]
    if case.affected_versions:
        parts.append(f"Affected versions: {case.affected_versions}")
    if case.fixed_version:
        parts.append(f"Fixed in: {case.fixed_version}")
    if case.workaround:
        parts.append(f"Workaround: {case.workaround}")
    return "\n\n".join(parts)


def _osv_severity(vector: str | None) -> dict[str, str] | None:
    if not vector:
        return None
    if vector.startswith("CVSS:4."):
        return {"type": "CVSS_V4", "score": vector}
    if vector.startswith("CVSS:3."):
        return {"type": "CVSS_V3", "score": vector}
    return {"type": "CVSS_V2", "score": vector}


# --- CSAF 2.0 ------------------------------------------------------------------------------

def _cvss_score(vector: str | None) -> dict[str, Any] | None:
    """The CSAF score object (FIRST's CVSS JSON) of a v2 or v3 vector; CSAF 2.0 has none for
    v4 (the vector is then in a note)."""
    if not vector or vector.startswith("CVSS:4."):
        return None
    from cvss import CVSS2, CVSS3

    if vector.startswith("CVSS:3."):
        return {"cvss_v3": CVSS3(vector).as_json(minimal=True)}
    return {"cvss_v2": CVSS2(vector).as_json(minimal=True)}


def csaf(case: Case, settings: Settings, now: dt.datetime, modified: dt.datetime,
         statuses: list[dict[str, str]]) -> dict[str, Any]:
    from seclistd import __version__

    project = settings.project.name
    package = package_name(settings)
    final = case.disclosed_at is not None
    released = _stamp(case.disclosed_at) if final else _stamp(now)
    version = "1" if final else "0"

    affected_id, fixed_id = "AFFECTED-1", "FIXED-1"
    products: list[dict[str, Any]] = [{
        "category": "product_version_range",
        "name": case.affected_versions or "all versions before the fix",
        "product": {"name": f"{project} {package} {case.affected_versions or ''}".strip(),
                    "product_id": affected_id}}]
    if case.fixed_version:
        products.append({"category": "product_version", "name": case.fixed_version,
                         "product": {"name": f"{project} {package} {case.fixed_version}",
                                     "product_id": fixed_id}})
    branches: list[dict[str, Any]] = [{
        "category": "vendor", "name": project,
        "branches": [{"category": "product_name", "name": package, "branches": products}]}]

    status: dict[str, list[str]] = {"known_affected": [affected_id]}
    if case.fixed_version:
        status["fixed"] = [fixed_id]
    threats: list[dict[str, Any]] = []
    for n, dist in enumerate(statuses, 1):
        pid = f"DISTRIBUTION-{n}"
        branches.append({"category": "vendor", "name": dist["organization"], "branches": [{
            "category": "product_name", "name": package,
            "product": {"name": f"{package} as shipped by {dist['organization']}",
                        "product_id": pid}}]})
        status.setdefault(VENDOR_STATUS_TO_CSAF[dist["vendor_status"]], []).append(pid)
        if dist["statement"]:
            threats.append({"category": "impact", "details": dist["statement"],
                            "product_ids": [pid]})

    notes = [{"category": "summary", "title": "Summary", "text": case.subject}]
    if case.affected_versions:
        notes.append({"category": "details", "title": "Affected versions",
                      "text": case.affected_versions})
    if case.severity and case.severity.startswith("CVSS:4."):
        notes.append({"category": "other", "title": "CVSS v4", "text": case.severity})
    vuln: dict[str, Any] = {
        "ids": [{"system_name": f"{project} security advisory", "text": case.id}],
        "title": case.subject[:200],
        "notes": notes,
        "discovery_date": _stamp(case.received_at),
        "product_status": status,
    }
    if final:
        vuln["release_date"] = _stamp(case.disclosed_at)  # type: ignore[arg-type]
    score = _cvss_score(case.severity)
    if score:
        vuln["scores"] = [{**score, "products": status["known_affected"]}]
    remediations = []
    if case.fixed_version:
        remediations.append({"category": "vendor_fix",
                             "details": f"Update to {package} {case.fixed_version} or later.",
                             "product_ids": [affected_id]})
    if case.workaround:
        remediations.append({"category": "workaround", "details": case.workaround,
                             "product_ids": [affected_id]})
    if remediations:
        vuln["remediations"] = remediations
    if threats:
        vuln["threats"] = threats
    line, contact = _credit(case, settings)
    if line:
        vuln["acknowledgments"] = [{"names": [line], **({"urls": contact} if contact else {})}]

    distribution: dict[str, Any] = (
        {"tlp": {"label": "WHITE"}} if final else
        {"text": "Embargoed" + (f" until {_stamp(case.embargo_until)}"
                                if case.embargo_until else "") + ": not for publication.",
         "tlp": {"label": "AMBER"}})
    return {
        "document": {
            "category": "csaf_security_advisory",
            "csaf_version": "2.0",
            "title": f"{project}: {case.subject}"[:300],
            "lang": "en",
            "publisher": {"category": "vendor", "name": project,
                          "namespace": publisher_url(settings),
                          "contact_details": settings.project.security_address},
            "distribution": distribution,
            "notes": [{"category": "summary", "title": "Summary", "text": case.subject}],
            "tracking": {
                "id": case.id,
                "status": "final" if final else "draft",
                "version": version,
                "initial_release_date": released,
                "current_release_date": _stamp(max(_utc(modified), _utc(now))
                                               if not final else case.disclosed_at),
                "revision_history": [{"date": released, "number": version,
                                      "summary": "Initial release" if final else "Draft"}],
                "generator": {"engine": {"name": "seclistd", "version": __version__},
                              "date": _stamp(now)},
            },
        },
        "product_tree": {"branches": branches},
        "vulnerabilities": [vuln],
    }
