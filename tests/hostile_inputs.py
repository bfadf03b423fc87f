"""Generated hostile messages of a chosen size, shared by tests/test_bounded.py and
bench/hostile.py.

Each kind aims at one place where work could grow faster than the input: a pattern that
backtracks, a parser that builds an object per part, a header parser. ``make(kind, size)``
returns a complete message of about ``size`` bytes whose hostile part fills the body (or
the header, for header kinds). The first four kinds reproduce issue 8's findings.
"""

from __future__ import annotations

import base64
from collections.abc import Callable

HEAD = {b"From": b"Mallory <mallory@example.net>", b"To": b"security@example.org",
        b"Message-ID": b"<%s-%d@example.net>", b"Date": b"Thu, 19 Nov 2026 10:00:00 +0000",
        b"Subject": b"hostile input"}


def _message(body: bytes, headers: bytes = b"") -> bytes:
    """The message after the common head (From, To, Message-ID, Date, Subject)."""
    return headers + b"\r\n" + body


def _fill(unit: bytes, size: int) -> bytes:
    return unit * max(1, size // len(unit))


def _plain(unit: bytes, tail: bytes = b"") -> Callable[[int], bytes]:
    def build(size: int) -> bytes:
        return _message(_fill(unit, size) + tail,
                        b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n")
    return build


def _html_only(unit: bytes, head: bytes = b"") -> Callable[[int], bytes]:
    def build(size: int) -> bytes:
        return _message(head + _fill(unit, size),
                        b"MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n")
    return build


def _header(name: bytes, unit: bytes, sep: bytes = b"") -> Callable[[int], bytes]:
    """One long header (folded when ``sep`` holds a fold), then a short body."""
    def build(size: int) -> bytes:
        value = sep.join([unit] * max(1, size // (len(unit) + len(sep))))
        if name == b"From":
            value += b" <mallory@example.net>"
        return _message(b"short body\r\n", name + b": " + value + b"\r\n")
    return build


def many_parts(size: int, ctype: bytes = b"Content-Type: text/plain\r\n") -> bytes:
    part = b"--P\r\n" + ctype + b"\r\npart\r\n"
    body = _fill(part, size) + b"--P--\r\n"
    return _message(body,
                    b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="P"\r\n')


def deep_nesting(size: int, folded: bool = False) -> bytes:
    """Nested multiparts; with ``folded``, each Content-Type header is folded before its type."""
    ctype = (b'Content-Type:\r\n multipart/mixed;\r\n boundary="d%d"' if folded
             else b'Content-Type: multipart/mixed; boundary="d%d"')
    depth = max(2, size // (len(ctype) + 12))
    opens = b"".join(ctype % i + b"\r\n\r\n--d%d\r\n" % i for i in range(1, depth))
    closes = b"".join(b"--d%d--\r\n" % i for i in reversed(range(1, depth)))
    body = b"--d0\r\n" + opens + b"Content-Type: text/plain\r\n\r\nbottom\r\n" + closes
    return _message(body + b"--d0--\r\n",
                    b"MIME-Version: 1.0\r\n" + ctype % 0 + b"\r\n")


def open_quote_params(size: int) -> bytes:
    """A part whose Content-Type opens a quote and then holds only "; " (part headers are
    not bounded by the header limit): the stdlib splits such a header in quadratic time."""
    params = _fill(b"; ", size)
    body = (b'--Q\r\nContent-Type: text/plain; charset=utf-8; name="' + params
            + b'\r\nContent-Disposition: attachment; filename="' + params[:1000]
            + b'\r\n\r\nthe part\r\n--Q--\r\n')
    return _message(body, b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="Q"\r\n')


def base64_line(size: int) -> bytes:
    """A text part whose base64 is one line: it decodes to text the pipeline reads."""
    text = _fill(b"the attacker can overflow the buffer ", size * 3 // 4)
    return _message(base64.b64encode(text) + b"\r\n",
                    b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
                    b"Content-Transfer-Encoding: base64\r\n")


def quoted_printable(size: int) -> bytes:
    return _message(_fill(b"=3D=\r\n", size),
                    b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
                    b"Content-Transfer-Encoding: quoted-printable\r\n")


def report_words(size: int) -> bytes:
    """An ordinary report (the baseline): words, versions, steps, a credit line."""
    unit = (b"An unauthenticated remote attacker can overflow the parser in version 1.2.3 "
            b"of the library.\r\nSteps to reproduce:\r\n1. run the command below\r\n"
            b"$ curl http://localhost/\r\nPlease credit me as Jane (GitHub: @jane).\r\n")
    return _message(_fill(unit, size),
                    b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n")


KINDS: dict[str, Callable[[int], bytes]] = {
    # issue 8's reproductions
    "github_repeated": _plain(b"github"),
    "blank_lines": _plain(b"\n", b"end\n"),
    "pgp_begin_unterminated": _plain(b"-----BEGIN PGP MESSAGE-----\r\n"),
    "html_lt": _html_only(b"<"),
    # more found by reading the patterns
    "pgp_key_unterminated": _plain(b"-----BEGIN PGP PUBLIC KEY BLOCK-----\r\n"),
    "spaces_tabs": _plain(b" \t", b"end\r\n"),
    "one_long_line": _plain(b"x"),
    "digits_dots": _plain(b"1."),
    "at_handles": _plain(b"@a"),
    "credit_lines": _plain(b"credit \r\n"),
    "run_without_command": _plain(b"run "),
    "keyword_lines": _plain(b"X-CASE:  \r\n"),
    "html_comments": _html_only(b"<!--<a "),
    "html_tags": _html_only(b"<b>x</b>"),
    "html_long_charref": _html_only(b"1", b"<p>PoC &#"),
    "many_parts": many_parts,
    "many_parts_folded": lambda size: many_parts(size, b"Content-Type:\r\n text/plain\r\n"),
    "many_parts_bare": lambda size: many_parts(size, b""),
    "deep_nesting_folded": lambda size: deep_nesting(size, folded=True),
    "deep_nesting": deep_nesting,
    "open_quote_params": open_quote_params,
    "base64_one_line": base64_line,
    "quoted_printable": quoted_printable,
    "long_subject": _header(b"Subject", b"a"),
    "many_addresses": _header(b"To", b"u@example.com", b",\r\n "),
    "encoded_words": _header(b"Subject", b"=?utf-8?q?a?=", b" "),
    "from_encoded_words": _header(b"From", b"=?utf-8?q?a?=", b" "),
    "references_lt": _header(b"References", b"<"),
    "return_path_at": _header(b"Return-Path", b"<@"),
    "words": report_words,
}

ISSUE_KINDS = ("github_repeated", "blank_lines", "pgp_begin_unterminated", "html_lt")


def make(kind: str, size: int) -> bytes:
    """A message of about ``size`` bytes of this kind, with a Message-ID of its own."""
    rest = KINDS[kind](size)
    head = b"".join(name + b": " + value + b"\r\n" for name, value in HEAD.items()
                    if not rest.startswith(name + b":"))  # the kind's own From or Subject
    return head.replace(b"%s-%d", b"%s-%d" % (kind.encode(), size)) + rest
