"""Completeness of a report, and the reporter's wish for credit.

The seed policies ask a reporter for: a description with its impact, the affected versions,
steps to reproduce, the attack surface and any third-party software involved. Each item is a
small set of patterns over everything the reporter wrote (and the names of attachments: an
attached proof of concept counts as reproduction steps). The check errs towards asking: an
item is found only when the text plainly speaks of it, and asking for something the report
already says costs the reporter one line.

How to be credited is not a requirement of a report: the receipt asks it as an optional
question, and a reporter who never answers is credited as ``project.default_credit`` says.
``credit`` reads a wish only where the text plainly states one ("Credit: …", "please keep me
anonymous"); "an anonymous attacker" is no wish.

The text is a stranger's, so every pattern here does bounded work at each position: no
unbounded quantifier is followed by something that makes it backtrack (whitespace runs and
lookaheads have fixed bounds, handles are matched possessively), and only the first
``SCAN_CHARS`` characters are read. A report longer than that is asked for what its start
does not say.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DESCRIPTION = "a description of the problem and its impact"
VERSIONS = "the affected version(s)"
REPRODUCTION = "steps to reproduce (or a proof of concept)"
ATTACK_SURFACE = "the attack surface (who can reach it, and how)"
THIRD_PARTY = "any third-party software involved (or that there is none)"


SCAN_CHARS = 200_000


def _any(*patterns: str) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.I | re.M)


_IMPACT = _any(r"\bimpact", r"\battacker", r"\ballows?\b", r"\blead(s)? to\b", r"\bexploit",
               r"\bremote code", r"\bRCE\b", r"denial[- ]of[- ]service", r"\bDoS\b",
               r"\bescalat", r"\bbypass", r"\bleak", r"\bdisclos", r"\binject",
               r"\boverflow", r"\bcrash", r"\btraversal", r"\bXSS\b", r"\bSSRF\b",
               r"\bexecut", r"\bcompromis", r"\bunauthori[sz]ed")
_VERSIONS = _any(r"\bv?\d{1,9}\.\d{1,9}(?:\.\d{1,9})?(?:[-+][\w.]{1,40})?\b", r"\bversions?\b",
                 r"\bcommit\s{1,20}[0-9a-f]{7,40}\b", r"\b(?:main|master) branch\b",
                 r"\breleases?\b", r"\btag\s{1,20}\S")
# Numbered steps and shell prompts only at a line's start, after at most a few blanks on
# that line (``^\s*`` would run over every following blank line from every line start).
_REPRO = _any(r"\bsteps?\b", r"\breproduc", r"\bPoC\b", r"proof[- ]of[- ]concept",
              r"^[ \t]{0,40}\d{1,4}[.)][ \t]{1,40}\S", r"^[ \t]{0,40}\$ \S", r"```",
              r"\bcurl\s", r"\brun(?:ning)?\b[^\n]{1,100}?\bcommand",
              r"\bexploit (?:code|script)")
_SURFACE = _any(r"\battack (?:surface|vector)", r"\bremote(?:ly)?\b", r"\bnetwork\b",
                r"\blocal(?:ly)? (?:user|attacker|access)", r"\bunauthenticated\b",
                r"\bauthenticated\b", r"\bendpoint", r"\bAPI\b", r"\bexposed\b",
                r"\bdefault config", r"\bprivileg", r"\bphysical access", r"\bAV:[NALP]\b")
_THIRD = _any(r"third[- ]party", r"\bdependenc", r"\blibrar(?:y|ies)\b", r"\bupstream\b",
              r"\bvendor", r"\bno other software\b", r"\bonly (?:affects|in) \S{1,100} itself")

_REPRO_FILES = re.compile(r"(?:poc|exploit|repro|crash|\.py$|\.sh$|\.c$|\.go$|\.rb$|\.js$|"
                          r"\.zip$|\.tar|\.pcap)", re.I)

CHECKS = (
    (DESCRIPTION, lambda text, _files: len(text.split()) >= 25 and bool(_IMPACT.search(text))),
    (VERSIONS, lambda text, _files: bool(_VERSIONS.search(text))),
    (REPRODUCTION, lambda text, files: bool(_REPRO.search(text))
     or any(_REPRO_FILES.search(f) for f in files)),
    (ATTACK_SURFACE, lambda text, _files: bool(_SURFACE.search(text))),
    (THIRD_PARTY, lambda text, _files: bool(_THIRD.search(text))),
)


def missing(text: str, attachments: list[str]) -> list[str]:
    """The items the reporter has not given yet, in the policies' order."""
    text = text[:SCAN_CHARS]
    return [item for item, present in CHECKS if not present(text, attachments)]


@dataclass(frozen=True)
class Credit:
    name: str  # "" when the reporter asked for no credit
    github: str | None


_CREDIT_LINE = re.compile(
    r"^[ \t]{0,40}(?:please\s{1,10})?(?:credit(?:\s{1,10}(?:me|to))?|"
    r"acknowledge(?:\s{1,10}me)?(?:\s{1,10}as)?|thanks?\s{1,10}to)"
    r"\s{0,10}(?:as|:|-)?\s{0,10}(?P<value>[^\n]{1,120})$", re.I | re.M)
# Possessive: a run of letters is taken whole, never retried shorter. The lookahead (not a
# file or domain name) looks a bounded distance ahead, and only once the handle ended.
_HANDLE = (r"(?P<id>[A-Za-z0-9](?:[A-Za-z0-9]|-(?=[A-Za-z0-9])){0,38}+)\b"
           r"(?![\w.-]{0,64}\.\w)")
# "GitHub: x", "GitHub ID @x", "github.com/x" anywhere; a bare "@x" only on the credit line.
_GITHUB = re.compile(r"github(?:\.com/|\s*+(?:id|handle|user(?:name)?)?+\s*+[:=]?+\s*+@?+)"
                     + _HANDLE, re.I)
_AT_HANDLE = re.compile(r"(?:(?<=\s)|(?<=\()|^)@" + _HANDLE)
# A wish not to be named: "stay anonymous", "credit me anonymously", "no credit", or a credit
# line whose value is "anonymous"; never the word alone ("an anonymous user can ...").
_ANONYMOUS = re.compile(
    r"\b(?:(?:stay|remain|be|keep me|kept|credit(?:ed)?(?: me)?(?: as)?|list me as)"
    r"[ \t]{1,5}anonymous(?:ly)?|anonymous(?:ly)?,? please|no credit|do not credit|"
    r"don't credit|do not (?:name|mention) me|don't (?:name|mention) me)\b", re.I)
_ANONYMOUS_VALUE = re.compile(r"^(?:anonymous(?:ly)?|none|no credit)\b", re.I)


def credit(text: str, default_name: str) -> Credit | None:
    """The credit the reporter asked for, or None when the text says nothing about it (or
    asks for credit without a name or GitHub ID to credit: the project's default applies)."""
    text = text[:SCAN_CHARS]
    line = _CREDIT_LINE.search(text)
    if _ANONYMOUS.search(text) or (
            line is not None and _ANONYMOUS_VALUE.match(line.group("value").strip())):
        return Credit(name="", github=None)
    found = ((line and (_GITHUB.search(line.group("value"))
                        or _AT_HANDLE.search(line.group("value"))))
             or _GITHUB.search(text))
    github = found.group("id") if found else None
    if line is None and github is None:
        return None
    name = default_name
    if line is not None:
        value = _AT_HANDLE.sub("", _GITHUB.sub("", line.group("value")))
        value = re.sub(r"\(\s*\)|\[\s*\]", "", value).strip(" \t\r.,:;()[]-")
        if value and not re.fullmatch(r"(?:me|my name|please)", value, re.I):
            name = value
    if not name and github is None:
        return None  # "credit me" and no name known: not a wish for anonymity
    return Credit(name=name[:200], github=github)
