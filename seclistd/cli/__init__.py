"""The `seclistd` command line: the parser, assembled from one module per noun
(`system`, `cases`, `outbox`, `quarantine`, `keys`, `members`,
`requests`, `backup`), and `main`, which runs one command
and turns every failure into one line on stderr and the documented exit code.

No command prints a traceback. A closed standard output (`seclistd cases show ID | head -1`)
ends the command quietly with exit 1, as the Python documentation recommends for
SIGPIPE; anything unexpected is logged as one line naming the exception's class (never its
message, which may carry mail content or SQL parameters) and exits 1.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

from seclistd import config as config_mod
from seclistd.cli import backup, cases, keys, members, outbox, quarantine, requests, system
from seclistd.cli.common import (
    EXIT_FAILED,
    LOG_LEVELS,
    CliError,
    Parser,
    setup_logging,
)

log = logging.getLogger("seclistd")

EPILOG = f"""\
exit codes: 0 success, 1 operation failed or refused, 2 usage or configuration error.

environment:
  SECLISTD_CONFIG     the config file when --config is not given
                      (default {config_mod.DEFAULT_PATH})
  SECLISTD_LOG_LEVEL  how much is logged on stderr: {', '.join(LOG_LEVELS)}
                      (default INFO for run and migrate, WARNING otherwise)
"""


def version() -> str:
    """The installed package's version (its metadata), else the source tree's."""
    from importlib import metadata

    try:
        return metadata.version("seclistd")
    except metadata.PackageNotFoundError:
        from seclistd import __version__

        return __version__


def build_parser() -> Parser:
    common = Parser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS,
                        help="config file (default $SECLISTD_CONFIG, else "
                             f"{config_mod.DEFAULT_PATH})")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="one JSON document on stdout")
    parser = Parser(prog="seclistd", parents=[common], epilog=EPILOG,
                    formatter_class=argparse.RawDescriptionHelpFormatter,
                    description="The mail daemon behind a project's security@ address.")
    parser.add_argument("--version", action="version", version=f"seclistd {version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    def add(name: str, func: Callable[[argparse.Namespace], int], helptext: str,
            into: Any) -> Parser:
        p = into.add_parser(name, help=helptext, description=helptext, parents=[common])
        p.set_defaults(func=func)
        return p

    for noun in (system, cases, outbox, quarantine, keys, members, requests, backup):
        noun.register(sub, add, [common])
    _describe(parser)
    return parser


def _describe(parser: argparse.ArgumentParser) -> None:
    """Give every (sub)command's --help a description: its one-line help where it has none
    (the group parsers: `cases`, `outbox`, ...)."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {choice.dest: choice.help for choice in action._choices_actions}
        for name, child in action.choices.items():
            if child.description is None and helps.get(name):
                child.description = helps[name]
            _describe(child)


def main(argv: list[str] | None = None) -> int:
    if sys.stdout is None:  # started with standard output closed (`>&-`)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    try:
        try:
            code = _run(argv)
        except SystemExit:
            sys.stdout.flush()  # --help, --version and usage errors print too
            raise
        sys.stdout.flush()  # here, so a closed pipe is caught below, not at exit
        return code
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly. Point stdout at /dev/null so the
        # interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED
    except OSError as exc:  # the output could not be written (a full disk, /dev/full)
        print(f"seclistd: cannot write the output ({exc.strerror or type(exc).__name__});"
              " write it somewhere with room", file=sys.stderr)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED


def _run(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    args.config = getattr(args, "config", None)
    args.json = getattr(args, "json", False)
    try:
        setup_logging("INFO" if args.command in ("run", "migrate") else "WARNING")
        return int(args.func(args))
    except CliError as exc:
        if str(exc):
            print(f"seclistd: {exc}", file=sys.stderr)
        return exc.code
    except BrokenPipeError:
        raise  # main() ends quietly
    except KeyboardInterrupt:
        return EXIT_FAILED
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EIO) and args.command != "run":
            raise  # the output could not be written: main() says so in one line
        return _unexpected(args, exc)
    except Exception as exc:  # noqa: BLE001 - the last resort: one line, never a traceback
        return _unexpected(args, exc)


def _unexpected(args: argparse.Namespace, exc: BaseException) -> int:
    """One line naming the command and the exception's type, never its text (it may hold
    message content); with SECLISTD_LOG_LEVEL=DEBUG also where it was raised."""
    name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    command = " ".join(filter(None, (args.command, getattr(args, "action", None))))
    log.error("`seclistd %s` failed on an unexpected %s; run it again with "
              "SECLISTD_LOG_LEVEL=DEBUG to log where", command, name)
    if log.isEnabledFor(logging.DEBUG):
        # Where it happened, without the exception's text (it may hold message content).
        frames = traceback.format_list(traceback.extract_tb(exc.__traceback__))
        log.debug("%s raised at:\n%s", name, "".join(frames).rstrip())
    return EXIT_FAILED
