"""Membership criteria of a distributors list, and reading an applicant's answers to them.

Owns: the ``oci`` and ``kubernetes`` presets (our own wording, every criterion of each policy;
the OCI example's PGP criterion included, Kubernetes' eleven ending with the link to the pull
request that adds the applicant to the members table), the list's own criteria from the
config, recognising a join request, and matching the answers in a request's body to the
criteria. Pure functions: no database, no clock.

How answers are matched. Applicants copy each criterion -- usually the policy's wording, not
ours -- and answer below it, but they renumber, reword, drop, garble and quote differently.
So numbers are never trusted; the text is. The body is cut into lines; each line has a quote
depth (``>``), an optional marker (``1.``, ``1)``, ``(1)``, ``#1``, ``Criterion 3:``, a
bullet, markdown bold or heading) and its text. A line starts a *block*; a copied criterion
that wraps continues, while its sentence has not ended, over lines that are indented,
quoted as deep, or that make it match better (a wrapped copy gains the criterion's words,
an answer only others). Every block is scored against every criterion by a small model:

* words are lower-cased, stop words dropped, and stemmed (Snowball); a word that is no stem of
  the criteria's vocabulary is matched to the closest vocabulary word by edit similarity
  (rapidfuzz, >= 80), which absorbs typos and garbled copies;
* each stem weighs its rarity among the criteria (``1 + ln(N / df)``), so "security", shared
  by several, counts less than "vouch" or "embargo"; a word no criterion knows weighs most;
* a criterion's *vocabulary* is its text plus its phrases; ``precision`` is the share of the
  block's weight its vocabulary explains, ``coverage`` the best share of one reference (the
  text or one phrase) that the block contains; the score is ``0.6 precision + 0.4 coverage``.

A block with a quote, marker, markdown or a label ("PGP: yes": an unquoted line whose part
before ``:``/`` - ``/``?`` matches a criterion alone, the rest being its answer) is a
candidate copy at ``COPY_THRESHOLD``; a plain line only at ``PLAIN_THRESHOLD`` with three
matched stems, and only when the message has fewer than two marked copies (if the applicant
quoted the criteria, plain lines are answers). A plain line with no answer below it that
speaks in the first person ("We accept the embargo policy.") is its own answer.
Assignment is greedy: best (style, score, position) first, each criterion at most one block,
each block at most one criterion. A block nobody took is ordinary text. The answer to a
criterion is the text between its block and the next assigned block (less deeper-quoted
lines, signatures, pasted keys, "Thanks," closings), plus what followed ``:``/``-`` on the
copy's own line ("6. PGP: yes"). Text before the first block (a greeting) is ignored.

Bounded work: only the first ``MAX_BODY`` characters, ``MAX_LINES`` lines of at most
``MAX_LINE`` characters and ``MAX_WORDS`` words per block are read; every pattern is linear
and runs on one line; each distinct word is normalised once per call.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import snowballstemmer
from rapidfuzz import fuzz, process

from seclistd.config import CriterionSettings, ListSettings

MAX_BODY = 64 * 1024
MAX_LINES = 2000
MAX_LINE = 1000
MAX_WORDS = 80
MAX_ANSWER = 4000
MAX_BLOCK_LINES = 4
COPY_THRESHOLD = 0.5
PLAIN_THRESHOLD = 0.72
MIN_COVERAGE = 0.4
FUZZY_CUTOFF = 80
JOIN_REQUEST_MIN_CRITERIA = 3
ROLES = ("contact", "pgp", "embargo", "contribute", "voucher", "link")


@dataclass(frozen=True)
class Criterion:
    id: str  # stable id, e.g. "alias", "pgp", "vouch" (presets) or from config
    text: str  # our own wording, quoted to applicants when it is missing
    phrases: tuple[str, ...]  # phrases that recognise it in an applicant's copy
    role: str = ""  # "" or one of ROLES


@dataclass(frozen=True)
class Answers:
    answers: dict[str, str]  # criterion id -> the applicant's answer text (non-empty)
    missing: list[str]  # criterion ids without an answer, in the criteria's order


# --- the presets ----------------------------------------------------------------------------

_ALIAS = Criterion(
    "alias", "A security contact address (a mail alias) for this project that your team "
    "watches actively. Tell us the address to subscribe.",
    ("security email alias", "security alias email", "actively monitored", "security contact",
     "contact address", "email alias", "monitored alias", "alias for our project",
     "security mailbox", "security team address"), "contact")
_USERS = Criterion(
    "userbase", "Users outside your own organisation (the distribution is not only for "
    "internal use).",
    ("user base", "users base", "not limited to your own organization", "users outside",
     "external users", "customers", "organisation", "organization"))
_RECORD = Criterion(
    "track_record", "A public record, which anyone can check, of fixing security problems, "
    "kept up to this day.",
    ("publicly verifiable track record", "track record", "fixing security issues",
     "security fixes", "security advisories", "verifiable", "up to present day"))
_OWN = Criterion(
    "not_downstream", "The distribution is your own work, not a downstream copy or a rebuild "
    "of another distribution.",
    ("not be a downstream", "downstream", "rebuild of another distribution", "not a rebuild",
     "derivative"))
_EMBARGO = Criterion(
    "embargo", "You accept the list's embargo policy. What you learn here goes only to the "
    "people who need it to fix the issue, and nowhere else until the agreed disclosure date.",
    ("accept the embargo policy", "embargo policy", "embargo", "agree to the embargo"),
    "embargo")
_CONTRIBUTE = Criterion(
    "contribute", "You are willing to contribute back (review and test proposed patches, "
    "help draft announcements and release notes).",
    ("willing to contribute back", "contribute back", "contributing back",
     "review and test patches", "help with release notes"), "contribute")
_PGP = Criterion(
    "pgp", "You can receive and handle mail encrypted with OpenPGP (PGP).",
    ("pgp", "pgp-encrypted email", "handle pgp-encrypted", "willing and able", "gpg",
     "openpgp", "encrypted email", "encrypted mail"), "pgp")
_VOUCH = Criterion(
    "vouch", "A current member of the list vouches for the person asking to join on behalf "
    "of your distribution. Name that member.",
    ("vouch", "vouches for", "someone already on the list", "already on the list",
     "requesting membership on behalf", "person requesting membership", "sponsor"), "voucher")
_MAINTAINED = Criterion(
    "maintained", "An actively maintained distribution of Kubernetes components, certified "
    "as conformant by the CNCF.",
    ("actively maintained", "CNCF certified", "certified distribution",
     "distribution of kubernetes", "kubernetes components", "conformance", "conformant"))
_PARTICIPANT = Criterion(
    "participant", "Your people take part in the Kubernetes community and contribute to it "
    "actively.",
    ("participant", "active contributor", "in the community", "participate",
     "community participation"))
_LINK = Criterion(
    "link", "A link to your pull request that adds your address to the members table.",
    ("link to PR", "pull request", "PR updating this document", "membership table",
     "members table", "updating this document", "link"), "link")

PRESETS: dict[str, tuple[Criterion, ...]] = {
    # The order of the OCI example request (which adds the PGP criterion before vouching).
    "oci": (_ALIAS, _USERS, _RECORD, _OWN, _EMBARGO, _CONTRIBUTE, _PGP, _VOUCH),
    # Kubernetes' example request, 0-10.
    "kubernetes": (_ALIAS, _MAINTAINED, _USERS, _RECORD, _OWN, _PARTICIPANT, _EMBARGO,
                   _CONTRIBUTE, _PGP, _VOUCH, _LINK),
}

# A list's own criterion without a role gets one when its text plainly names exactly one
# (and no other criterion of the list has it): the join workflow reads the voucher, the key
# and the contact address from the answers to these.
_ROLE_HINTS = (
    ("voucher", re.compile(r"\bvouch", re.I)),
    ("pgp", re.compile(r"\b(?:pgp|gpg|openpgp|encrypt)", re.I)),
    ("embargo", re.compile(r"\bembargo", re.I)),
    ("contact", re.compile(r"\b(?:alias|contact address|security (?:e-?mail|address))", re.I)),
    ("contribute", re.compile(r"\bcontribut\w{0,10} back\b", re.I)),
    ("link", re.compile(r"\b(?:pull request|PR)\b", re.I)),
)


def _guess_role(text: str) -> str:
    found = [role for role, pattern in _ROLE_HINTS if pattern.search(text[:MAX_LINE])]
    return found[0] if len(found) == 1 else ""


def criteria_for(lst: ListSettings) -> tuple[Criterion, ...]:
    """The criteria of a list: a preset, or its own from the config."""
    if isinstance(lst.criteria, str):
        return PRESETS[lst.criteria]
    return _own(lst.criteria)


def _own(items: Iterable[CriterionSettings]) -> tuple[Criterion, ...]:
    items = tuple(items)
    given = {c.role for c in items if c.role}
    guessed = {c.id: _guess_role(c.text) for c in items if not c.role}
    counts: dict[str, int] = {}
    for role in guessed.values():
        counts[role] = counts.get(role, 0) + 1
    out = []
    for c in items:
        role = c.role
        if not role:
            role = guessed[c.id]
            if role in given or counts.get(role, 0) > 1:
                role = ""
        out.append(Criterion(c.id, c.text, tuple(c.phrases), role))
    return tuple(out)


# --- words ------------------------------------------------------------------------------------

_WORD = re.compile(r"[a-z0-9]+")
_STOP_WORDS = """
a an the to of for and or in on at by be is are was were been being am have has had having
our your you we i my me us it its this that these those with as from any some all can could
will would should must may might do does did so if then than there their they them he she
his her also just very which who whom what when where how yes no yep please per into onto
about above outlined s t ll re ve d m
"""
_STOP = frozenset(_STOP_WORDS.split())
_STEMMER = snowballstemmer.stemmer("english")


@dataclass
class _Model:
    """The criteria's vocabulary and weights, built once per call."""

    criteria: tuple[Criterion, ...]
    refs: list[list[list[str]]]  # per criterion: its text's stems, then each phrase's
    vocab: list[set[str]]  # per criterion: every stem of its text and phrases
    weight: dict[str, float]
    unknown_weight: float
    words: dict[str, str]  # a vocabulary word (as written) -> its stem
    word_list: list[str]
    cache: dict[str, str] = field(default_factory=dict)

    def stem(self, word: str) -> str:
        """The vocabulary stem this word stands for, or its own stem when none is close."""
        got = self.cache.get(word)
        if got is not None:
            return got
        result = _STEMMER.stemWord(word)
        if result not in self.weight and len(word) >= 4:
            best = process.extractOne(word, self.word_list, scorer=fuzz.ratio,
                                      score_cutoff=FUZZY_CUTOFF)
            if best is not None:
                result = self.words[best[0]]
        self.cache[word] = result
        return result

    def stems(self, text: str) -> list[str]:
        out: list[str] = []
        for word in _WORD.findall(text.lower()):
            if word in _STOP or word.isdigit() or len(word) < 2:
                continue
            out.append(self.stem(word))
            if len(out) >= MAX_WORDS:
                break
        return out

    def w(self, stem: str) -> float:
        return self.weight.get(stem, self.unknown_weight)

    def score(self, stems: Sequence[str], k: int) -> tuple[float, int]:
        """(score, number of distinct stems matched) of a block against criterion k; 0 when
        the block covers less than ``MIN_COVERAGE`` of every reference (one word that the
        criterion happens to use is no copy of it)."""
        distinct = set(stems)
        if not distinct:
            return 0.0, 0
        vocab = self.vocab[k]
        total = sum(self.w(s) for s in distinct)
        matched = [s for s in distinct if s in vocab]
        if not matched:
            return 0.0, 0
        precision = sum(self.w(s) for s in matched) / total
        coverage = 0.0
        for ref in self.refs[k]:
            if ref:
                have = sum(self.w(s) for s in ref if s in distinct)
                coverage = max(coverage, have / sum(self.w(s) for s in ref))
        if coverage < MIN_COVERAGE:
            return 0.0, len(matched)
        return 0.6 * precision + 0.4 * coverage, len(matched)


def _plain_stems(text: str) -> list[str]:
    return [_STEMMER.stemWord(w) for w in _WORD.findall(text.lower())
            if w not in _STOP and not w.isdigit() and len(w) >= 2]


def _model(criteria: Sequence[Criterion]) -> _Model:
    criteria = tuple(criteria)
    refs: list[list[list[str]]] = []
    vocab: list[set[str]] = []
    words: dict[str, str] = {}
    for c in criteria:
        these = [_plain_stems(c.text)] + [_plain_stems(p) for p in c.phrases]
        refs.append([r for r in these if r])
        vocab.append({s for r in these for s in r})
        for text in (c.text, *c.phrases):
            for word in _WORD.findall(text.lower()):
                if word not in _STOP and not word.isdigit() and len(word) >= 2:
                    words.setdefault(word, _STEMMER.stemWord(word))
    n = max(len(criteria), 1)
    df: dict[str, int] = {}
    for v in vocab:
        for s in v:
            df[s] = df.get(s, 0) + 1
    weight = {s: 1.0 + math.log(n / d) for s, d in df.items()}
    return _Model(criteria, refs, vocab, weight, 1.0 + math.log(n) if n > 1 else 1.0,
                  words, sorted(words))


# --- lines and blocks ------------------------------------------------------------------------

# Applied to a line whose quote markers are already removed; every part has a fixed bound.
_HEADING = re.compile(r"#{1,6}[ \t]{1,10}")
_NUMBER = re.compile(
    r"(?:\(\s{0,2}\d{1,3}\s{0,2}\)|#\s{0,2}\d{1,3}[.):]?|\d{1,3}\s{0,2}[.):\]]"
    r"|(?:criterion|criteria|requirement|item|question|point)\s{0,3}#?\s{0,2}\d{1,3}"
    r"\s{0,2}[.):-]?)(?:[ \t]{1,10}|$)", re.I)
_BULLET = re.compile(r"[-*+\u2022][ \t]{1,10}")
# Where a copy ends and an answer on the same line begins: "6. PGP: yes", "Embargo - we do".
_INLINE = re.compile(r":[ \t]|[ \t][-\u2013\u2014][ \t]|\?[ \t]|[ \t]?=>[ \t]|[ \t]->[ \t]")
_SENTENCE_END = (".", "?", "!", ":")
_CLOSING = re.compile(r"(?:thanks|thank you|many thanks|regards|best|best regards|"
                      r"kind regards|cheers|sincerely|yours)\b[ \t,.!]{0,5}$", re.I)
_ATTRIBUTION = re.compile(r"\bwrote:[ \t]{0,5}$")
_AFFIRMATIVE = re.compile(r"(?:we|our|i|yes|yep|sure|absolutely|of course|certainly)\b", re.I)
_EMPTY_ANSWER = re.compile(r"(?:tbd|todo|\?+|-+|\.+|_+|\[[^\]\n]{0,40}\]|<[^>\n]{0,40}>)",
                           re.I)


@dataclass
class _Line:
    depth: int  # number of ">" quote markers
    indent: int  # leading blanks after the quote markers
    style: str  # "plain", "number", "bullet", "bold", "heading"
    text: str  # without quote markers, list marker and markdown emphasis
    raw: str  # without quote markers, stripped


def _parse_line(line: str) -> _Line:
    line = line[:MAX_LINE]
    depth, i, last = 0, 0, 0
    while i < len(line) and line[i] in "> \t":
        if line[i] == ">":
            depth += 1
            last = i + 1
        i += 1
    rest = line[last:] if depth else line
    if depth and rest.startswith(" "):
        rest = rest[1:]
    stripped = rest.lstrip(" \t")
    indent = len(rest) - len(stripped)
    text = stripped.rstrip()
    style = "plain"
    m = _HEADING.match(text)
    if m:
        style, text = "heading", text[m.end():]
    if text.startswith(("**", "__")):
        style = "bold" if style == "plain" else style
    text = text.replace("**", "").replace("__", "").strip()
    m = _NUMBER.match(text)
    if m:
        style, text = "number", text[m.end():]
    else:
        m = _BULLET.match(text)
        if m and style == "plain":
            style, text = "bullet", text[m.end():]
    return _Line(depth, indent, style, text.strip(), stripped.rstrip())


@dataclass
class _Block:
    start: int  # index of its first line
    end: int  # index after its last line
    depth: int
    style: str
    text: str
    inline: str = ""  # an answer on the copy's own line
    best: list[tuple[float, int]] = field(default_factory=list)  # (score, criterion index)


def _blocks(lines: list[_Line], model: _Model) -> list[_Block]:
    """Every line that starts a block, joined with the lines that continue its sentence: an
    indented line, a line quoted as deep, or an unquoted line that makes the copy match
    better (a wrapped copy gains words of the criterion, an answer only other words)."""
    blocks: list[_Block] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.text:
            i += 1
            continue
        block = _score_block(_Block(i, i + 1, line.depth, line.style, line.text), model)
        while (block.end < len(lines) and block.end - i < MAX_BLOCK_LINES
               and not block.inline and not block.text.endswith(_SENTENCE_END)):
            nxt = lines[block.end]
            if not nxt.text or nxt.style != "plain":
                break
            joined = _score_block(_Block(i, block.end + 1, line.depth, line.style,
                                         f"{block.text} {nxt.text}"), model)
            if not (nxt.indent >= 2 or nxt.depth == line.depth > 0
                    or (nxt.depth == line.depth and nxt.text[:1].islower()
                        and _top(joined) >= _top(block) > 0)):
                break
            block = joined
        blocks.append(block)
        i = block.end
    return blocks


def _top(block: _Block) -> float:
    return block.best[0][0] if block.best else 0.0


def _score_block(block: _Block, model: _Model) -> _Block:
    stems = model.stems(block.text)
    scores = [(*model.score(stems, k), k) for k in range(len(model.criteria))]
    # A copy with its answer on the same line: the part before the separator carries it.
    m = _INLINE.search(block.text) if block.depth == 0 else None
    if m and m.end() < len(block.text):
        head, tail = block.text[:m.start()], block.text[m.end():].strip()
        head_stems = model.stems(head)
        head_scores = [(*model.score(head_stems, k), k) for k in range(len(model.criteria))]
        best_head = max(head_scores, default=(0.0, 0, 0))
        if best_head[0] >= COPY_THRESHOLD and tail:
            tail_alone, tail_matched = model.score(model.stems(tail), best_head[2])
            copy_goes_on = tail_alone >= PLAIN_THRESHOLD and tail_matched >= 3
            if tail_alone < best_head[0] and not copy_goes_on:
                block.inline = tail
                scores = head_scores
    block.best = sorted(((s, k) for s, n, k in scores
                         if s >= _threshold(block) and (_marked(block) or n >= 3)),
                        reverse=True)
    return block


def _threshold(block: _Block) -> float:
    marked = block.depth > 0 or block.style != "plain"
    return COPY_THRESHOLD if marked or block.inline else PLAIN_THRESHOLD


def _marked(block: _Block) -> bool:
    return block.depth > 0 or block.style != "plain" or bool(block.inline)


def _style_key(block: _Block) -> tuple[int, str]:
    return block.depth, block.style


def _assign(blocks: list[_Block]) -> dict[int, _Block]:
    """Criterion index -> its copy block: at most one each way, best candidates first."""
    candidates = [b for b in blocks if b.best]
    marked = [b for b in candidates if _marked(b)]
    if len(marked) >= 2:
        candidates = marked
    styles: dict[tuple[int, str], int] = {}
    for b in candidates:
        styles[_style_key(b)] = styles.get(_style_key(b), 0) + 1
    dominant = max(styles, key=lambda s: styles[s]) if styles else None
    pairs = sorted(((_style_key(b) == dominant, score, -b.start, k, b)
                    for b in candidates for score, k in b.best),
                   key=lambda p: p[:4], reverse=True)
    taken: dict[int, _Block] = {}
    used: set[int] = set()
    for _, _, _, k, b in pairs:
        if k not in taken and b.start not in used:
            taken[k] = b
            used.add(b.start)
    return taken


def _answer(block: _Block, following: list[_Line]) -> str:
    """The answer below a copy (and on its own line), up to the next copy."""
    limit = max(block.depth, 1)
    parts = [block.inline] if block.inline else []
    blank_before = False
    for line in following:
        if line.depth >= limit:
            continue
        raw = line.raw
        if (raw in ("--", "-- ") or raw.startswith("-----BEGIN PGP")
                or _ATTRIBUTION.search(raw)):
            break
        if not raw:
            blank_before = True
            continue
        if blank_before and len(raw) <= 40 and _CLOSING.match(raw):
            break
        blank_before = False
        parts.append(raw)
    text = "\n".join(parts).strip()
    if _EMPTY_ANSWER.fullmatch(text):
        return ""
    if not text and block.style in ("plain", "bullet") and block.depth == 0 \
            and _AFFIRMATIVE.match(block.text):
        return block.text  # "We accept the embargo policy." is copy and answer at once
    return text[:MAX_ANSWER]


def _lines(body: str) -> list[_Line]:
    # NUL never reaches an answer: PostgreSQL refuses it in text.
    text = body[:MAX_BODY].replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    return [_parse_line(line) for line in text.split("\n", MAX_LINES)[:MAX_LINES]]


def _match(body: str, model: _Model) -> tuple[dict[str, str], dict[int, _Block]]:
    lines = _lines(body)
    taken = _assign(_blocks(lines, model))
    order = sorted(taken.items(), key=lambda item: item[1].start)
    answers: dict[str, str] = {}
    for n, (k, block) in enumerate(order):
        stop = order[n + 1][1].start if n + 1 < len(order) else len(lines)
        answer = _answer(block, lines[block.end:stop])
        if answer:
            answers[model.criteria[k].id] = answer
    return answers, taken


def _result(answers: Mapping[str, str], criteria: Sequence[Criterion]) -> Answers:
    known = {c.id for c in criteria}
    kept = {cid: text for cid, text in answers.items() if cid in known and text}
    return Answers(answers=kept, missing=[c.id for c in criteria if c.id not in kept])


# --- the public surface --------------------------------------------------------------------

def match_answers(body: str, criteria: Sequence[Criterion]) -> Answers:
    """The applicant's answer to each criterion found in ``body``, and what is missing."""
    answers, _ = _match(body, _model(criteria))
    return _result(answers, criteria)


def merge_answers(previous: dict[str, str], body: str,
                  criteria: Sequence[Criterion]) -> Answers:
    """A reply to an incomplete request: new answers fill gaps or replace, old ones stay.

    A reply that answers without copying any criterion ("Yes, we can.") answers the one
    criterion still missing, when exactly one is."""
    model = _model(criteria)
    found, _ = _match(body, model)
    merged = {cid: text for cid, text in previous.items() if text}
    merged.update(found)
    result = _result(merged, criteria)
    if not found and len(result.missing) == 1:
        own = _own_words(body)
        if own:
            merged[result.missing[0]] = own
            result = _result(merged, criteria)
    return result


def _own_words(body: str) -> str:
    """What the sender wrote themselves: unquoted lines before a signature or quote."""
    parts: list[str] = []
    for line in _lines(body):
        if line.depth:
            continue
        raw = line.raw
        if raw in ("--", "-- ") or raw.startswith("-----BEGIN PGP") or _ATTRIBUTION.search(raw):
            break
        if parts and parts[-1] == "" and len(raw) <= 40 and _CLOSING.match(raw):
            break
        parts.append(raw)
    text = "\n".join(parts).strip()
    return "" if _EMPTY_ANSWER.fullmatch(text) else text[:MAX_ANSWER]


_SUBJECT_JOIN = re.compile(
    r"\bmembership[ \t]{1,5}(?:to|for|of|in|on|request|application)\b"
    r"|\b(?:request|requesting|apply|applying|application|asking)[ \t]{1,5}(?:to|for)"
    r"[ \t]{1,5}(?:join|membership|be added|subscribe)\b"
    r"|\bjoin(?:ing)?\b[^\n]{0,100}(?:\blist\b|distributors?|announce|@)", re.I)


def looks_like_join_request(subject: str, body: str, criteria: Sequence[Criterion]) -> bool:
    """A request to join: a subject of that shape ("Seven-Corp Membership to <list>",
    "Request to join ...", "Joining the distributors list"), or a body in which at least
    ``JOIN_REQUEST_MIN_CRITERIA`` (or half of the) criteria are copied and answered."""
    subject = " ".join((subject or "")[:500].split())
    if _SUBJECT_JOIN.search(subject):
        return True
    answers, taken = _match(body or "", _model(criteria))
    need = max(JOIN_REQUEST_MIN_CRITERIA, math.ceil(len(criteria) / 2))
    return len(taken) >= need and len(answers) >= JOIN_REQUEST_MIN_CRITERIA


_SUBJECT_ORG = re.compile(r"\bmembership\b", re.I)
_REPLY_PREFIX = re.compile(r"(?:(?:re|fwd?|aw|sv)[ \t]{0,3}:[ \t]{0,3})+", re.I)
_REQUEST_PREFIX = re.compile(r"(?:request(?:ing)?|application)[ \t]{0,3}(?:for|:)?[ \t]{0,3}$",
                             re.I)
_BODY_ORG = re.compile(r"\bwe,[ \t]{1,3}([^,\n]{1,80}),")
_ORG_LINE = re.compile(r"^[ \t]{0,10}(?:organi[sz]ation|company|distribution|vendor)[ \t]{0,3}:"
                       r"[ \t]{0,10}([^\n]{1,120})$", re.I | re.M)


def organization_of(subject: str, body: str) -> str:
    """The applicant's organisation: "Seven-Corp" from "Seven-Corp Membership to <list>",
    else from "we, Seven-Corp, qualify" or an "Organization: ..." line; "" if unknown."""
    subject = " ".join((subject or "")[:500].replace("\x00", "").split())
    m = _SUBJECT_ORG.search(subject)
    if m:
        head = subject[:m.start()]
        prefix = _REPLY_PREFIX.match(head)
        if prefix:
            head = head[prefix.end():]
        words = head.split()
        if words and _REQUEST_PREFIX.match(words[-1]):
            words = words[:-1]
        head = " ".join(words).strip(" \t-:,;\"'")
        if head and len(head) <= 120 and not _REQUEST_PREFIX.fullmatch(head):
            return head
    text = (body or "")[:MAX_BODY].replace("\x00", "")
    for pattern in (_BODY_ORG, _ORG_LINE):
        found = pattern.search(text)
        if found:
            return found.group(1).strip(" \t\"'.")
    return ""


def voucher_named(answers: Answers | dict[str, str], criteria: Sequence[Criterion]) -> str:
    """The text the applicant gave for the ``voucher`` criterion ("" if none)."""
    given = answers.answers if isinstance(answers, Answers) else answers
    for c in criteria:
        if c.role == "voucher":
            return given.get(c.id, "")
    return ""


def describe_missing(missing: list[str], criteria: Sequence[Criterion]) -> list[str]:
    """Our wording of each missing criterion, in the order of ``missing`` (ids the list no
    longer has are left out)."""
    by_id = {c.id: c for c in criteria}
    return [by_id[cid].text for cid in missing if cid in by_id]
