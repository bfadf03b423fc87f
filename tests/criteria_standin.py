"""A minimal private stand-in for ``seclistd.workflows.criteria`` (branch h-criteria), with
its interface, used only while that module has not landed: quoted criterion lines
(``> …``) are matched to criteria by word overlap, the lines below them are the answer.
Installed by ``tests/test_requests.py`` only when the real module cannot be imported."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_WORD = re.compile(r"[a-z]{3,}")


@dataclass(frozen=True)
class Criterion:
    id: str
    text: str
    phrases: tuple[str, ...]
    role: str = ""


@dataclass(frozen=True)
class Answers:
    answers: dict[str, str]
    missing: list[str]


_COMMON = (
    Criterion("alias", "Your distribution has a security contact address that someone reads",
              ("actively monitored security alias email",), "contact"),
    Criterion("users", "Its users are not only your own organisation",
              ("user base not limited to your own organization",)),
    Criterion("record", "You have fixed security problems in public, up to now",
              ("publicly verifiable track record fixing security issues",)),
    Criterion("original", "It is not a downstream or rebuild of another distribution",
              ("not be a downstream or rebuild of another distribution",)),
)
_TAIL = (
    Criterion("embargo", "You accept our embargo policy", ("accept the embargo policy",),
              "embargo"),
    Criterion("contribute", "You will contribute back", ("willing to contribute back",),
              "contribute"),
    Criterion("pgp", "You can handle PGP-encrypted mail",
              ("willing and able to handle pgp encrypted email",), "pgp"),
    Criterion("vouch", "A current member vouches for you",
              ("someone already on the list vouch for the person requesting membership",),
              "voucher"),
)
PRESETS = {
    "oci": _COMMON + _TAIL,
    "kubernetes": (_COMMON[0], Criterion("distribution", "You maintain a Kubernetes "
                                         "distribution", ("actively maintained distribution of "
                                                          "kubernetes components",)),
                   *_COMMON[1:],
                   Criterion("community", "You take part in the community",
                             ("participant and active contributor in the community",)),
                   *_TAIL,
                   Criterion("link", "A link to your pull request adding you to the table",
                             ("link to pr updating this document membership table",),
                             "link")),
}


def criteria_for(lst: object) -> tuple[Criterion, ...]:
    return PRESETS[getattr(lst, "criteria", "oci")]


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def _best(line: str, criteria: Sequence[Criterion]) -> str | None:
    words = _words(line)
    scored = [(len(words & _words(c.text + " " + " ".join(c.phrases))), c.id) for c in criteria]
    score, cid = max(scored)
    return cid if score >= 3 else None


def match_answers(body: str, criteria: Sequence[Criterion]) -> Answers:
    answers: dict[str, str] = {}
    current: str | None = None
    lines: list[str] = []

    def close() -> None:
        text = "\n".join(lines).strip()
        if current and text:
            answers.setdefault(current, text)

    for line in body[:65536].splitlines():
        if line.startswith(">") or re.match(r"\d{1,2}[.)] ", line):
            if current and not lines:
                continue  # a wrapped criterion
            close()
            current, lines = _best(line, criteria), []
            continue
        if current is not None:
            lines.append(line)
    close()
    return Answers(answers, [c.id for c in criteria if c.id not in answers])


def merge_answers(previous: dict[str, str], body: str,
                  criteria: Sequence[Criterion]) -> Answers:
    new = match_answers(body, criteria).answers
    merged = {**previous, **new}
    return Answers(merged, [c.id for c in criteria if c.id not in merged])


def looks_like_join_request(subject: str, body: str, criteria: Sequence[Criterion]) -> bool:
    return len(match_answers(body, criteria).answers) >= 3 or "membership" in subject.lower()


def organization_of(subject: str, body: str) -> str:
    match = re.search(r"([A-Z][\w-]{1,40}) [Mm]embership", subject)
    return match.group(1) if match else ""


def voucher_named(answers: Answers | dict[str, str], criteria: Sequence[Criterion]) -> str:
    values = answers.answers if isinstance(answers, Answers) else answers
    role = next((c.id for c in criteria if c.role == "voucher"), None)
    return values.get(role, "") if role else ""


def describe_missing(missing: list[str], criteria: Sequence[Criterion]) -> list[str]:
    texts = {c.id: c.text for c in criteria}
    return [texts.get(m, m) for m in missing]
