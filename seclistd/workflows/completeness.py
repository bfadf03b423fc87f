"""Completeness of a report, and the reporter's wish for credit.

The seed policies ask a reporter for: a description with its impact, the affected versions,
steps to reproduce, the attack surface, any third-party software involved, and how to be
credited. Each item is a small set of patterns over everything the reporter wrote (and the
names of attachments: an attached proof of concept counts as reproduction steps). The check
errs towards asking: an item is found only when the text plainly speaks of it, and asking
for something the report already says costs the reporter one line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DESCRIPTION = "a description of the problem and its impact"
VERSIONS = "the affected version(s)"
REPRODUCTION = "steps to reproduce (or a proof of concept)"
ATTACK_SURFACE = "the attack surface (who can reach it, and how)"
THIRD_PARTY = "any third-party software involved (or that there is none)"
CREDIT = "how you would like to be credited (name, GitHub ID, or anonymous)"


def _any(*patterns: str) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.I | re.M)


_IMPACT = _any(r"\bimpact", r"\battacker", r"\ballows?\b", r"\blead(s)? to\b", r"\bexploit",
               r"\bremote code", r"\bRCE\b", r"denial[- ]of[- ]service", r"\bDoS\b",
               r"\bescalat", r"\bbypass", r"\bleak", r"\bdisclos", r"\binject",
               r"\boverflow", r"\bcrash", r"\btraversal", r"\bXSS\b", r"\bSSRF\b",
               r"\bexecut", r"\bcompromis", r"\bunauthori[sz]ed")
_VERSIONS = _any(r"\bv?\d+\.\d+(?:\.\d+)?(?:[-+][\w.]+)?\b", r"\bversions?\b",
                 r"\bcommit\s+[0-9a-f]{7,40}\b", r"\b(?:main|master) branch\b",
                 r"\breleases?\b", r"\btag\s+\S+")
_REPRO = _any(r"\bsteps?\b", r"\breproduc", r"\bPoC\b", r"proof[- ]of[- ]concept",
              r"^\s*\d+[.)]\s+\S", r"^\s*\$ \S", r"```", r"\bcurl\s", r"\brun(ning)?\b.+\bcommand",
              r"\bexploit (?:code|script)")
_SURFACE = _any(r"\battack (?:surface|vector)", r"\bremote(?:ly)?\b", r"\bnetwork\b",
                r"\blocal(?:ly)? (?:user|attacker|access)", r"\bunauthenticated\b",
                r"\bauthenticated\b", r"\bendpoint", r"\bAPI\b", r"\bexposed\b",
                r"\bdefault config", r"\bprivileg", r"\bphysical access", r"\bAV:[NALP]\b")
_THIRD = _any(r"third[- ]party", r"\bdependenc", r"\blibrar(?:y|ies)\b", r"\bupstream\b",
              r"\bvendor", r"\bno other software\b", r"\bonly (?:affects|in) \S+ itself")
_CREDIT = _any(r"\bcredit", r"\backnowledg(?:e|ment) (?:me|as)\b", r"\bgithub\b",
               r"\banonymous", r"\bthank(?:s)? (?:me )?as\b", r"\bhandle\b")

_REPRO_FILES = re.compile(r"(?:poc|exploit|repro|crash|\.py$|\.sh$|\.c$|\.go$|\.rb$|\.js$|"
                          r"\.zip$|\.tar|\.pcap)", re.I)

CHECKS = (
    (DESCRIPTION, lambda text, _files: len(text.split()) >= 25 and bool(_IMPACT.search(text))),
    (VERSIONS, lambda text, _files: bool(_VERSIONS.search(text))),
    (REPRODUCTION, lambda text, files: bool(_REPRO.search(text))
     or any(_REPRO_FILES.search(f) for f in files)),
    (ATTACK_SURFACE, lambda text, _files: bool(_SURFACE.search(text))),
    (THIRD_PARTY, lambda text, _files: bool(_THIRD.search(text))),
    (CREDIT, lambda text, _files: bool(_CREDIT.search(text))),
)


def missing(text: str, attachments: list[str]) -> list[str]:
    """The items the reporter has not given yet, in the policies' order."""
    return [item for item, present in CHECKS if not present(text, attachments)]


@dataclass(frozen=True)
class Credit:
    name: str  # "" when the reporter asked for no credit
    github: str | None


_CREDIT_LINE = re.compile(
    r"^\s*(?:please\s+)?(?:credit(?:\s+(?:me|to))?|acknowledge(?:\s+me)?(?:\s+as)?|thanks?\s+to)"
    r"\s*(?:as|:|-)?\s*(?P<value>[^\n]{1,120})$", re.I | re.M)
_HANDLE = r"(?P<id>[A-Za-z0-9](?:[A-Za-z0-9]|-(?=[A-Za-z0-9])){0,38})(?![\w.-]*\.\w)\b"
# "GitHub: x", "GitHub ID @x", "github.com/x" anywhere; a bare "@x" only on the credit line.
_GITHUB = re.compile(r"github(?:\.com/|\s*(?:id|handle|user(?:name)?)?\s*[:=]?\s*@?)" + _HANDLE,
                     re.I)
_AT_HANDLE = re.compile(r"(?:(?<=\s)|(?<=\()|^)@" + _HANDLE)
_ANONYMOUS = re.compile(r"\b(?:anonymous(?:ly)?|no credit|do not credit|don't credit)\b", re.I)


def credit(text: str, default_name: str) -> Credit | None:
    """The credit the reporter asked for, or None when the text says nothing about it."""
    if _ANONYMOUS.search(text):
        return Credit(name="", github=None)
    line = _CREDIT_LINE.search(text)
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
    return Credit(name=name[:200], github=github)
