"""Real components for the tests: a Dovecot IMAP server, an aiosmtpd relay sink, configs.

Dovecot 2.3 runs in the foreground (``dovecot -F``) with its own config in a short
temporary directory on a free loopback port; as root it runs its login processes as
Debian's ``dovenull``/``dovecot`` users and stores mail as ``dovecot`` (NOTES.md).
"""

from __future__ import annotations

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
from email import message_from_bytes, policy
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
        time.sleep(interval)


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
    proc = subprocess.Popen([binary, "-F", "-c", str(conf)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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

    @property
    def message(self) -> EmailMessage:
        return message_from_bytes(self.raw, policy=policy.default)  # type: ignore[return-value]


@dataclass
class Sink:
    """A real aiosmtpd SMTP server that records what the relay delivers."""

    port: int
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
                                          envelope.original_content or envelope.content))
        return "250 OK"

    def start(self) -> None:
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)
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


def cli(config: Path, *args: str, input: bytes | None = None, env: dict[str, str] | None = None,
        timeout: float = 120, faketime: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m seclistd --config CONFIG ARGS…` (under `faketime -f OFFSET` if given)
    and capture its output."""
    import sys

    prefix = ["faketime", "-f", faketime] if faketime else []
    proc = subprocess.run([*prefix, sys.executable, "-m", "seclistd", "--config", str(config),
                           *args],
                          input=input if input is not None else b"", capture_output=True,
                          timeout=timeout,
                          env={**os.environ, **(env or {})})
    return subprocess.CompletedProcess(proc.args, proc.returncode,
                                       proc.stdout.decode("utf-8", "replace"),
                                       proc.stderr.decode("utf-8", "replace"))


def start_daemon(config: Path, log: Path, wait: bool = False) -> subprocess.Popen[bytes]:
    """`seclistd run` in the background; with ``wait``, return once it says it runs."""
    import sys

    start = log.stat().st_size if log.exists() else 0
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "seclistd", "--config", str(config),
                                 "run"], stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    if wait:
        wait_for(lambda: b"seclistd running" in log.read_bytes()[start:], timeout=60,
                 what="the daemon to start")
    return proc
