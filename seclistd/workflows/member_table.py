"""The members table: import of a Markdown table as projects publish it, and export.

Import reads the table a policy file carries (``| Email | Organization |``, an alignment row,
then one row per member) the way people actually write it: rows without the closing (or
opening) pipe, tabs, extra columns, blank lines inside the table, text and headings around it,
several tables in one file, addresses written as ``<a@b>``, ```a@b``` or
``[a@b](mailto:a@b)``. A table starts at a header row naming an e-mail column and an
organisation column (in either order) and ends at the next Markdown heading. Every row is
either added or reported as skipped with its line number and the reason (bad address,
duplicate of an earlier row, already a member, removed earlier, missing organisation...).
Imported members have no key pinned (a table carries none) and get no mail: an import moves
an existing roster in, it does not subscribe anyone new.

Export writes the Markdown table (active and suspended members, sorted by address, which
import reads back), or CSV and JSON carrying the contract's Member fields.

Everything here is linear in the input: lines are split with ``str`` methods, no regular
expression looks at the file, and the file's size is capped before it is read.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from seclistd.config import ListSettings, Settings
from seclistd.list_models import Member
from seclistd.mail import compose
from seclistd.mail.loops import canonical_mailbox
from seclistd.member_views import member_view
from seclistd.workflows import members
from seclistd.workflows.member_states import ACTIVE, REMOVED, SUSPENDED

MAX_TABLE_BYTES = 1024 * 1024
MAX_LINE = 2000  # characters; a longer line is skipped, not parsed
MAX_ROWS = 20_000
EXPORT_FORMATS = ("markdown", "csv", "json")
FIELDS = ("email", "organization", "fingerprint", "state", "list", "key_expires")

EMAIL_HEADERS = frozenset({"email", "e-mail", "email address", "e-mail address", "address",
                           "mail", "mail address", "contact", "alias", "security alias",
                           "security contact"})
ORG_HEADERS = frozenset({"organization", "organisation", "org", "company", "vendor",
                         "distribution", "distributor", "distro"})


@dataclass(frozen=True)
class Row:
    line: int
    email: str
    organization: str


@dataclass(frozen=True)
class Skipped:
    line: int
    text: str  # the row as read, shortened and cleaned
    reason: str

    def as_dict(self) -> dict[str, object]:
        return {"line": self.line, "text": self.text, "reason": self.reason}


@dataclass
class Parsed:
    rows: list[Row] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    tables: int = 0


# --- reading the Markdown -----------------------------------------------------------------

def cells(line: str) -> list[str]:
    """The cells of one table line: split on unescaped ``|``, outer pipes optional, each
    cell stripped (tabs too) and ``\\|`` read as a pipe."""
    out: list[str] = []
    current: list[str] = []
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        if c == "\\" and i + 1 < n and line[i + 1] == "|":
            current.append("|")
            i += 2
            continue
        if c == "|":
            out.append("".join(current))
            current = []
        else:
            current.append(c)
        i += 1
    out.append("".join(current))
    stripped = line.strip()
    if stripped.startswith("|"):
        out = out[1:]
    if (stripped.endswith("|") and not stripped.endswith("\\|")) and out:
        out = out[:-1]
    return [c.strip() for c in out]


def _header_name(cell: str) -> str:
    return " ".join(cell.strip("*_` :").lower().replace("_", " ").split())


def _header(line: str) -> tuple[int, int] | None:
    """(email column, organisation column) when ``line`` is a header row naming both."""
    if "|" not in line:
        return None
    names = [_header_name(c) for c in cells(line)]
    email = next((i for i, n in enumerate(names) if n in EMAIL_HEADERS), None)
    org = next((i for i, n in enumerate(names) if n in ORG_HEADERS), None)
    if email is None or org is None or email == org:
        return None
    return email, org


def _is_alignment(row: list[str]) -> bool:
    return bool(row) and all(c and set(c) <= set(":- ") and "-" in c for c in row)


def _address_in(cell: str) -> str:
    """The address a cell holds: bare, ``<a@b>``, ```a@b```, ``mailto:a@b`` or a Markdown
    link ``[a@b](mailto:a@b)`` (the link target wins)."""
    text = cell.strip()
    if text.startswith("[") and "](" in text and text.endswith(")"):
        text = text[text.index("](") + 2:-1].strip()
    text = text.strip("`*_ ").strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    if text[:7].lower() == "mailto:":
        text = text[7:].partition("?")[0]
    return text


def _organization_in(cell: str) -> str:
    text = cell.strip()
    if text.startswith("[") and "](" in text and text.endswith(")"):
        text = text[1:text.index("](")]  # a linked name: the name
    return members.clean_organization(text.strip("*_` "))


def parse(text: str) -> Parsed:
    """Every member row of every members table in ``text``, and what was skipped and why."""
    parsed = Parsed()
    columns: tuple[int, int] | None = None
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):  # a heading ends the table
            columns = None
            continue
        if len(line) > MAX_LINE:
            if columns is not None:
                parsed.skipped.append(Skipped(number, compose.short(line, 80),
                                              f"the line is over {MAX_LINE} characters"))
            continue
        header = _header(line)
        if header is not None:
            columns = header
            parsed.tables += 1
            continue
        if columns is None:
            continue
        shown = compose.short(line, 120)
        if "|" not in line:
            if "@" in line:
                parsed.skipped.append(Skipped(number, shown,
                                              "not a table row (no | between the columns)"))
            continue
        row = cells(line)
        if _is_alignment(row):
            continue
        if len(parsed.rows) >= MAX_ROWS:
            parsed.skipped.append(Skipped(number, shown, f"over {MAX_ROWS} rows: not read"))
            break
        email_at, org_at = columns
        email = _address_in(row[email_at]) if email_at < len(row) else ""
        organization = _organization_in(row[org_at]) if org_at < len(row) else ""
        if not email and not organization and not any(row):
            continue  # an empty row (| | |)
        if not email:
            parsed.skipped.append(Skipped(number, shown, "no address in the email column"))
            continue
        address = canonical_mailbox(email)
        problem = members.address_problem(address)
        if problem:
            parsed.skipped.append(Skipped(number, shown,
                                          f"bad address: {compose.short(email, 60)} {problem}"))
            continue
        if address in seen:
            parsed.skipped.append(Skipped(number, shown,
                                          f"duplicate of line {seen[address]}"))
            continue
        if not organization:
            parsed.skipped.append(Skipped(number, shown, "missing organisation"))
            continue
        seen[address] = number
        parsed.rows.append(Row(number, address, organization))
    return parsed


# --- import -------------------------------------------------------------------------------

@dataclass
class ImportReport:
    list_name: str
    added: list[Member] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    tables: int = 0


class TableError(members.MemberError):
    """The file holds no members table at all (or cannot be read as text)."""


def decode(data: bytes) -> str:
    if len(data) > MAX_TABLE_BYTES:
        raise TableError(f"the file is {len(data)} bytes, over the limit of "
                         f"{MAX_TABLE_BYTES}; expected a Markdown members table")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TableError(f"the file is not UTF-8 text (byte {exc.start}); expected a "
                         "Markdown members table") from exc


def import_table(session: Session, now: dt.datetime, settings: Settings, lst: ListSettings,
                 text: str, actor: str, source: str = "") -> ImportReport:
    """Add every new member the table lists to ``lst``; report each row not added and why.

    Rows whose address is already a member (active or suspended) are skipped; so is an
    address that was removed: a removal is the team's decision, undone only by
    ``members add``.
    """
    parsed = parse(text)
    if parsed.tables == 0:
        raise TableError("no members table found: expected a Markdown table whose header "
                         "row names an Email and an Organization column, e.g. "
                         "'| Email | Organization |'")
    report = ImportReport(list_name=lst.name, skipped=list(parsed.skipped),
                          tables=parsed.tables)
    existing = {m.email: m for m in session.scalars(
        select(Member).where(Member.list_name == lst.name))}
    detail = f"imported from {compose.short(source, 200)}" if source else "imported"
    for row in parsed.rows:
        shown = f"{row.email} | {row.organization}"
        member = existing.get(row.email)
        if member is not None and member.state in (ACTIVE, SUSPENDED):
            report.skipped.append(Skipped(row.line, shown,
                                          f"already a member ({member.state})"))
            continue
        own = members.own_address(settings, row.email)
        if own is not None:
            report.skipped.append(Skipped(row.line, shown, f"our own address ({own}), not "
                                                           "a member's"))
            continue
        if member is not None and member.state == REMOVED:
            when = member.removed_at.date().isoformat() if member.removed_at else "earlier"
            report.skipped.append(Skipped(
                row.line, shown, f"removed on {when}; `seclistd members add {row.email}` "
                                 "adds it again"))
            continue
        added = members.add(session, now, settings, lst=lst, email=row.email,
                            organization=row.organization, actor=actor, tell=False,
                            detail=f"{detail}, line {row.line}")
        existing[row.email] = added
        report.added.append(added)
    report.skipped.sort(key=lambda s: s.line)
    return report


# --- export -------------------------------------------------------------------------------

def exported(session: Session, lst: ListSettings, include_removed: bool = False
             ) -> list[Member]:
    states = (ACTIVE, SUSPENDED, REMOVED) if include_removed else (ACTIVE, SUSPENDED)
    return list(session.scalars(select(Member).where(
        Member.list_name == lst.name, Member.state.in_(states)).order_by(Member.email)))


def _md_cell(text: str) -> str:
    return " ".join(text.split()).replace("\\", "\\\\").replace("|", "\\|")


def markdown(rows: list[Member]) -> str:
    """The table a project publishes in its policy file: email and organisation."""
    lines = ["| Email | Organization |", "| --- | --- |"]
    lines += [f"| {_md_cell(m.email)} | {_md_cell(m.organization)} |" for m in rows]
    return "\n".join(lines) + "\n"


def _csv_cell(value: object) -> str:
    """A cell a spreadsheet shows as text: a leading = + - @ (a formula) gets a quote."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def as_csv(rows: list[Member], tz: ZoneInfo) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(FIELDS), extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    for m in rows:
        doc = member_view(m, tz)
        writer.writerow({k: _csv_cell(doc[k]) for k in FIELDS})
    return out.getvalue()


def as_json(rows: list[Member], tz: ZoneInfo) -> str:
    return json.dumps([member_view(m, tz) for m in rows], indent=2, ensure_ascii=False) + "\n"


def export(session: Session, settings: Settings, lst: ListSettings, fmt: str,
           include_removed: bool = False) -> str:
    rows = exported(session, lst, include_removed and fmt != "markdown")
    if fmt == "markdown":
        return markdown(rows)
    if fmt == "csv":
        return as_csv(rows, settings.project.tz)
    if fmt == "json":
        return as_json(rows, settings.project.tz)
    raise ValueError(f"unknown export format {fmt!r}")
