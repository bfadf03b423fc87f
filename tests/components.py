"""Real components for the tests: a Dovecot IMAP server, an aiosmtpd relay sink, configs.

Dovecot 2.3 runs in the foreground (``dovecot -F``) with its own config in a short
temporary directory on a free loopback port; as root it runs its login processes as
Debian's ``dovenull``/``dovecot`` users and stores mail as ``dovecot`` (NOTES.md).
"""

from __future__ import annotations

import datetime as dt
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email import message_from_bytes, message_from_string, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

IMAP_USER = "security@example.org"
IMAP_PASSWORD = "test-password"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pause(seconds: float) -> None:
    """Sleep. Not ``time.sleep``: under ``faketime -f @DATE make test`` (the suite on another
    day) libfaketime turns its absolute monotonic deadline into EINVAL, while an Event's
    timed wait keeps working."""
    threading.Event().wait(seconds)


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05,
             what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        pause(interval)


def wait_port(port: int, timeout: float = 10.0) -> None:
    def is_open() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            return False

    wait_for(is_open, timeout, what=f"port {port}")


DOVECOT_CONF = """\
base_dir = {base}/run
state_dir = {base}/state
listen = 127.0.0.1
protocols = imap
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
log_path = {base}/dovecot.log
default_login_user = {login_user}
default_internal_user = {internal_user}
first_valid_uid = 0
mail_location = maildir:{base}/mail/%u
mail_uid = {uid}
mail_gid = {gid}
passdb {{
  driver = static
  args = password={password}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={base}/mail/%u
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
service stats {{
  unix_listener stats-reader {{
    mode = 0666
  }}
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
protocol imap {{
  mail_max_userip_connections = 100
}}
"""


@dataclass
class Dovecot:
    base: Path
    port: int
    proc: subprocess.Popen[bytes]
    user: str = IMAP_USER
    password: str = IMAP_PASSWORD

    def client(self) -> Any:
        from imapclient import IMAPClient, SocketTimeout

        client = IMAPClient("127.0.0.1", port=self.port, ssl=False,
                            timeout=SocketTimeout(connect=5, read=30))
        client.login(self.user, self.password)
        return client

    def append(self, messages: list[bytes], folder: str = "INBOX") -> None:
        client = self.client()
        try:
            for raw in messages:
                client.append(folder, raw)
        finally:
            client.logout()

    def count(self, folder: str) -> int:
        client = self.client()
        try:
            if not client.folder_exists(folder):
                return 0
            return int(client.folder_status(folder, ["MESSAGES"])[b"MESSAGES"])
        finally:
            client.logout()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_dovecot() -> Dovecot:
    binary = shutil.which("dovecot") or "/usr/sbin/dovecot"
    base = Path(tempfile.mkdtemp(prefix="dc", dir="/tmp"))
    base.chmod(0o755)
    if os.geteuid() == 0:
        login_user, internal_user = "dovenull", "dovecot"
        owner = pwd.getpwnam("dovecot")
    else:
        login_user = internal_user = pwd.getpwuid(os.geteuid()).pw_name
        owner = pwd.getpwuid(os.geteuid())
    for sub in ("run", "state", "mail"):
        (base / sub).mkdir(mode=0o755)
    os.chown(base / "mail", owner.pw_uid, owner.pw_gid)
    port = free_port()
    conf = base / "dovecot.conf"
    conf.write_text(DOVECOT_CONF.format(base=base, port=port, login_user=login_user,
                                        internal_user=internal_user, uid=owner.pw_uid,
                                        gid=owner.pw_gid, password=IMAP_PASSWORD))
    # Dovecot is a server beside seclistd, like PostgreSQL: it runs on the machine's real
    # clock even when the whole suite runs under faketime (whose timers stall its logins).
    real_clock = {k: v for k, v in os.environ.items()
                  if not k.startswith("FAKETIME") and k != "LD_PRELOAD"}
    proc = subprocess.Popen([binary, "-F", "-c", str(conf)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=real_clock)
    try:
        wait_port(port)
    except AssertionError:
        proc.kill()
        log = base / "dovecot.log"
        raise AssertionError("dovecot did not start: "
                             + (log.read_text() if log.exists() else "no log")) from None
    return Dovecot(base=base, port=port, proc=proc)


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes
    mail_options: list[str] = field(default_factory=list)

    @property
    def message(self) -> EmailMessage:
        """The message as a mail reader sees it; UTF-8 headers (SMTPUTF8 mail) decoded."""
        try:
            text = self.raw.decode("utf-8")
        except UnicodeDecodeError:
            return message_from_bytes(self.raw, policy=policy.default)  # type: ignore[return-value]
        return message_from_string(text, policy=policy.default)  # type: ignore[return-value]


@dataclass
class Sink:
    """A real aiosmtpd SMTP server that records what the relay delivers. aiosmtpd's
    Controller offers SMTPUTF8 by default; ``smtputf8=False`` makes a next hop without it."""

    port: int
    smtputf8: bool = True
    controller: Controller | None = None
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    refuse: dict[str, str] = field(default_factory=dict)  # rcpt -> SMTP answer

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos),
                                          envelope.original_content or envelope.content,
                                          list(envelope.mail_options)))
        return "250 OK"

    def start(self) -> None:
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port,
                                     enable_SMTPUTF8=self.smtputf8)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def messages(self) -> list[Received]:
        with self.lock:
            return list(self.received)

    def to(self, address: str) -> list[Received]:
        return [r for r in self.messages() if address in r.rcpt_tos]


def write_config(tmp: Path, *, db_url: str | None = None, imap: Dovecot | None = None,
                 relay_port: int | None = None, listener_port: int | None = None,
                 listener_protocol: str = "smtp", team: list[str] | None = None,
                 extra: str = "", gnupg_home: Path | None = None, gnupg_key: str = "",
                 fingerprints: dict[str, str] | None = None) -> Path:
    """A config file for the tests; IMAP, relay and listener as given."""
    team = ["alice@example.org"] if team is None else team
    imap_port = imap.port if imap else None
    imap_user = imap.user if imap else IMAP_USER
    fingerprints = fingerprints or {}
    members = ", ".join(
        f'{{ email = "{m}", name = "Member {i}", fingerprint = "{fingerprints.get(m, "")}" }}'
        for i, m in enumerate(team))
    text = f"""
[project]
name = "Example"
security_address = "security@example.org"
timezone = "America/New_York"

[database]
url = "{db_url or f'sqlite:///{tmp}/seclistd.db'}"

[imap]
enabled = {"true" if imap_port else "false"}
host = "127.0.0.1"
port = {imap_port or 143}
security = "none"
username = "{imap_user}"
password = "{IMAP_PASSWORD}"
poll_interval = 2
timeout = 10

[listener]
enabled = {"true" if listener_port else "false"}
port = {listener_port or 8025}
protocol = "{listener_protocol}"

[relay]
transport = "{"smtp" if relay_port else "maildir"}"
host = "127.0.0.1"
port = {relay_port or 25}
security = "none"
maildir = "{tmp}/outgoing"
timeout = 10

[gnupg]
home = "{gnupg_home or f'{tmp}/gnupg'}"
key = "{gnupg_key}"

[calendar]
country = "US"

[team]
members = [{members}]
{extra}
"""
    path = tmp / "seclistd.toml"
    path.write_text(text)
    return path


def report(i: int, *, sender: str | None = None, subject: str | None = None,
           body: str | None = None, headers: str = "") -> bytes:
    sender = sender or f"reporter{i}@example.net"
    text = (f"From: Reporter {i} <{sender}>\r\nTo: security@example.org\r\n"
            f"Subject: {subject or f'Vulnerability number {i}'}\r\n"
            f"Message-ID: <report-{i}@example.net>\r\nDate: Thu, 19 Nov 2026 10:00:00 +0000\r\n"
            f"{headers}MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            f"{body or f'Report {i}: a buffer overflow in version 1.{i}.'}\r\n")
    return text.encode()


# The clock of every seclistd process a test starts, unless the test names another: a Thursday
# before Thanksgiving in New York, so that business days, holidays and the zone's offset all
# matter. Expected IDs, years and offsets are derived from it (``case_id``), never written
# down, and the suite passes whatever day the machine's clock says.
CLOCK = dt.datetime(2026, 11, 19, 15, 0, tzinfo=dt.UTC)


def case_id(n: int, when: dt.datetime = CLOCK, prefix: str = "SEC") -> str:
    """The ID of the n-th case opened in ``when``'s year."""
    return f"{prefix}-{when.year}-{n:04d}"


def ticking(start: dt.datetime = CLOCK) -> Callable[[], dt.datetime]:
    """A clock that reads ``start`` now and then runs on with the monotonic clock."""
    began = time.monotonic()
    return lambda: start + dt.timedelta(seconds=time.monotonic() - began)


class TestClock:
    """The clock of one test's seclistd processes: each process it starts begins at the
    test's start time plus the time elapsed in the test, so that one process never sees an
    earlier time than the one before it (an outbox row written by `ingest` is due for the
    `run --once` that follows). conftest restarts it at ``CLOCK`` for every test."""

    def __init__(self) -> None:
        self.now = ticking()

    def restart(self, start: dt.datetime = CLOCK) -> None:
        self.now = ticking(start)


TEST_CLOCK = TestClock()
MACHINE_CLOCK = None  # ``at=MACHINE_CLOCK``: the child runs on the machine's real clock


def faketime_env(when: dt.datetime | None) -> dict[str, str]:
    """The environment that starts a child's clock at ``when`` (it then runs on, and so do
    the clocks of its own children, gpg's included); ``None``: the machine's clock, as this
    process sees it.

    libfaketime is preloaded directly rather than through the ``faketime`` wrapper, which
    forks: the test's process handle must be the daemon itself, to signal it and read its
    /proc entry."""
    libs = sorted(Path("/usr/lib").glob("*/faketime/libfaketimeMT.so.1"))
    if when is None:
        if "faketime" not in os.environ.get("LD_PRELOAD", "") or not libs:
            return {}
        # The whole suite runs under `faketime` (make test on another day): the machine's
        # clock is the faked one. The child keeps the same FAKETIME, so that its clock and
        # that of every gpg the test runs agree, but with the multi-threaded library: the
        # wrapper's single-threaded one aborts a threaded Python in take_gil.
        return {"LD_PRELOAD": str(libs[0]), "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    if not libs:
        raise AssertionError("libfaketime is missing: apt-get install faketime (make test does)")
    # To the microsecond (libfaketime reads the fraction): a stamp cut to the second would
    # start a child up to a second before the one that ran just before it ended.
    stamp = when.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    # TZ=UTC: libfaketime reads an absolute time in the local zone. The monotonic clock stays
    # real: faked, it makes timed waits (threading.Event.wait, select) misjudge their timeouts.
    return {"LD_PRELOAD": str(libs[0]), "FAKETIME": f"@{stamp}", "TZ": "UTC",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


_TEST_TIME = dt.datetime.min  # stands for "the test clock's time now" (``TEST_CLOCK``)


def cli(config: Path, *args: str, input: bytes | None = None, env: dict[str, str] | None = None,
        timeout: float = 120, at: dt.datetime | None = _TEST_TIME,
        ) -> subprocess.CompletedProcess[str]:
    """Run `python -m seclistd --config CONFIG ARGS…` with its clock started at ``at`` (the
    test clock's time unless named) and capture its output."""
    import sys

    clock_env = faketime_env(TEST_CLOCK.now() if at is _TEST_TIME else at)
    proc = subprocess.run([sys.executable, "-m", "seclistd", "--config", str(config),
                           *args],
                          input=input if input is not None else b"", capture_output=True,
                          timeout=timeout,
                          env={**os.environ, **clock_env, **(env or {})})
    return subprocess.CompletedProcess(proc.args, proc.returncode,
                                       proc.stdout.decode("utf-8", "replace"),
                                       proc.stderr.decode("utf-8", "replace"))


def start_daemon(config: Path, log: Path, wait: bool = False,
                 at: dt.datetime | None = _TEST_TIME,
                 env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """`seclistd run` in the background, its clock started at ``at``; with ``wait``, return
    once it says it runs."""
    import sys

    start = log.stat().st_size if log.exists() else 0
    clock_env = faketime_env(TEST_CLOCK.now() if at is _TEST_TIME else at)
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "seclistd", "--config",
                                 str(config), "run"], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=out, env={**os.environ, **clock_env, **(env or {})})
    if wait:
        wait_for(lambda: b"seclistd running" in log.read_bytes()[start:], timeout=60,
                 what="the daemon to start")
    return proc
