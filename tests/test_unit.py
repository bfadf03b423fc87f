"""The shipped systemd unit against the production install README.md describes: its paths
are the install's, `systemd-analyze verify` accepts it on a root holding just that install,
and the credentials it loads are the names the example config reads."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from seclistd import config

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "seclistd.service"
SYSTEM_UNITS = Path("/usr/lib/systemd/system")


def directives(name: str) -> list[str]:
    return re.findall(rf"^{name}=(.*)$", UNIT.read_text(), re.M)


def install_root(tmp_path: Path, *, binary: bool = True) -> Path:
    """A scratch root with what README.md's install makes: the venv's console script, the
    config, the credentials directory (empty: a setup with no secrets) and the unit."""
    root = tmp_path / "root"
    # The targets the unit depends on (sysinit.target, ...), as the distribution ships them.
    shutil.copytree(SYSTEM_UNITS, root / SYSTEM_UNITS.relative_to("/"), symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, root / "etc/systemd/system/seclistd.service")
    (root / "etc/seclistd/credentials").mkdir(parents=True)
    shutil.copy(ROOT / "config/seclistd.example.toml", root / "etc/seclistd/seclistd.toml")
    # ExecReload's /bin/kill, as Debian ships it (procps).
    kill = root / "bin/kill"
    kill.parent.mkdir(parents=True)
    shutil.copy("/bin/kill", kill)
    if binary:
        script = root / "opt/seclistd/bin/seclistd"
        script.parent.mkdir(parents=True)
        script.write_text("#!/opt/seclistd/bin/python3\n")
        script.chmod(0o755)
    return root


def verify(root: Path) -> subprocess.CompletedProcess[str]:
    assert shutil.which("systemd-analyze"), "systemd-analyze is missing: apt-get install " \
        "systemd (make test does)"
    return subprocess.run(["systemd-analyze", "verify", f"--root={root}", "seclistd.service"],
                          capture_output=True, text=True, timeout=60)


def test_unit_verifies_on_the_documented_install(tmp_path: Path):
    assert SYSTEM_UNITS.is_dir(), "no /usr/lib/systemd/system: apt-get install systemd"
    done = verify(install_root(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "seclistd.service" not in done.stderr, done.stderr  # no warning about our unit


def test_verify_notices_a_missing_install(tmp_path: Path):
    """The check above means something: without /opt/seclistd the unit is refused."""
    done = verify(install_root(tmp_path, binary=False))
    assert done.returncode != 0
    assert "/opt/seclistd/bin/seclistd is not executable" in done.stderr


def test_unit_runs_the_venv_with_the_config_and_state_directory():
    assert directives("ExecStart") == ["/opt/seclistd/bin/seclistd run"]
    assert directives("ExecStartPre") == ["/opt/seclistd/bin/seclistd migrate"]
    assert directives("Environment") == [f"SECLISTD_CONFIG={config.DEFAULT_PATH}"]
    assert directives("Type") == ["notify"]
    assert directives("Restart") == ["on-failure"]
    assert directives("StateDirectory") == ["seclistd"]
    assert directives("User") == ["seclistd"]
    assert int(directives("WatchdogSec")[0]) > 0
    assert directives("MemoryMax") and directives("TasksMax")
    # The database and the GnuPG home the example config (and the defaults) name are in it.
    assert config.DatabaseSettings().url == "sqlite:////var/lib/seclistd/seclistd.db"
    assert config.GnupgSettings().home.startswith("/var/lib/seclistd/")


def test_credentials_need_no_file_per_secret():
    """One LoadCredential= for a directory: a missing file there is no error (a setup
    without IMAP has no imap-password), while a LoadCredential= naming a file fails the
    start when the file is missing."""
    loads = directives("LoadCredential")
    assert loads == ["credentials:/etc/seclistd/credentials"]


def test_example_config_reads_what_the_unit_loads(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch):
    """systemd names each file F of a directory loaded as ID:DIR `ID_F` (its
    recurse-dir loader joins the ID and the file's path with "_"); the example's
    `credentials/imap-password` must find that name under $CREDENTIALS_DIRECTORY."""
    ident, _, directory = directives("LoadCredential")[0].partition(":")
    text = (ROOT / "config/seclistd.example.toml").read_text()
    files = re.findall(r'^password_file = "([^"]+)"$', text, re.M)
    assert files == ["credentials/imap-password", "credentials/relay-password"]
    creds = tmp_path / "run-credentials"
    creds.mkdir()
    for name in files:
        assert name.startswith(Path(directory).name + "/")
        (creds / f"{ident}_{Path(name).name}").write_text(f"pw-{Path(name).name}\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    settings = config.parse("/etc/seclistd/seclistd.toml", text)
    assert settings.imap.password == "pw-imap-password"
    assert settings.relay.password == "pw-relay-password"


def test_readme_installs_what_the_unit_runs():
    readme = (ROOT / "README.md").read_text()
    section = readme.partition("## Install for production")[2].partition("\n## ")[0]
    assert section, "README.md has no 'Install for production' section"
    for needed in ("python3 -m venv /opt/seclistd", "/opt/seclistd/bin/pip install",
                   "/etc/seclistd/seclistd.toml", "/etc/seclistd/credentials",
                   "useradd", "keys generate", "systemctl enable --now seclistd",
                   "lmtp:inet:127.0.0.1:8025", "recipient_delimiter = +",
                   "systemd/seclistd.service", "url_file"):
        assert needed in section, needed
