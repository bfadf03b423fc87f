"""Configuration: every problem reported as `file: section.key: what, expected`, exit 2;
secrets from files and systemd credentials; the shipped configs are valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from seclistd import config
from tests.components import cli

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["seclistd.dev.toml", "seclistd.example.toml"])
def test_shipped_configs_are_valid(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # The example reads its passwords from systemd credentials, named as the shipped unit's
    # LoadCredential=credentials:/etc/seclistd/credentials names the files of that directory.
    for secret in ("credentials_imap-password", "credentials_relay-password"):
        (tmp_path / secret).write_text("x\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    settings = config.load(str(ROOT / "config" / name))
    assert settings.project.security_address.endswith("@example.org")


def test_every_problem_is_listed_with_what_is_expected(tmp_path: Path):
    path = tmp_path / "bad.toml"
    path.write_text("""
[project]
name = "X"
security_address = "not an address"
timezone = "Mars/Olympus"
colour = "blue"

[imap]
enabled = true
port = 99999
security = "ssl"

[sla]
ack_business_days = 3
remind_after_business_days = [1, 5]

[calendar]
country = "XX"
workdays = ["mon", "funday"]

[team]
members = [{ email = "alice@example.org", fingerprint = "ABC" }]
""")
    done = cli(path, "check-config")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    expected = {
        "project.security_address": "expected local@domain",
        "project.timezone": "expected an IANA name",
        "project.colour": "unknown key",
        "imap.port": "expected an integer from 1 to 65535",
        "imap.security": 'expected one of "tls", "starttls", "none"',
        "imap.host": "expected a value",
        "sla.remind_after_business_days": "between 1 and 2",
        "calendar.country": "ISO 3166-1",
        "calendar.workdays": "expected one of mon",
        "team.members[0].fingerprint": "40 hexadecimal digits",
    }
    for key, text in expected.items():
        matching = [line for line in lines if line.startswith(f"{path}: {key}: ")]
        assert matching, f"no problem reported for {key}: {lines}"
        assert text in matching[0]
    assert len(lines) == len(expected) + 1  # imap.username is empty too


def test_unreadable_or_broken_file(tmp_path: Path):
    missing = cli(tmp_path / "nope.toml", "check-config")
    assert missing.returncode == 2 and "cannot read it" in missing.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("[project\nname=")
    done = cli(broken, "check-config")
    assert done.returncode == 2 and "not valid TOML" in done.stderr


def test_secrets_from_files_and_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "imap-password").write_text("s3cret\n")
    (tmp_path / "relay.pw").write_text("relay-pw")
    text = f"""
[project]
name = "X"
security_address = "security@example.org"
[imap]
host = "imap.example.org"
username = "u"
password_file = "imap-password"
[relay]
host = "smtp.example.org"
password_file = "{tmp_path}/relay.pw"
"""
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    settings = config.parse("t.toml", text)
    assert settings.imap.password == "s3cret"
    assert settings.relay.password == "relay-pw"
    assert "s3cret" not in repr(settings)

    both = text.replace('username = "u"', 'username = "u"\npassword = "inline"')
    with pytest.raises(config.ConfigError) as err:
        config.parse("t.toml", both)
    assert "both password and password_file are set" in str(err.value)

    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(config.ConfigError) as err:
        config.parse("t.toml", text)
    assert "imap.password_file: cannot read imap-password" in str(err.value)


def test_config_path_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    assert config.resolve_path("/x.toml") == "/x.toml"
    monkeypatch.setenv("SECLISTD_CONFIG", "/env.toml")
    assert config.resolve_path(None) == "/env.toml"
    monkeypatch.delenv("SECLISTD_CONFIG")
    assert config.resolve_path(None) == config.DEFAULT_PATH


def test_autoreply_flood_limits_are_checked(tmp_path: Path):
    path = tmp_path / "flood.toml"
    path.write_text("""
[project]
name = "X"
security_address = "security@example.org"
[imap]
enabled = false
[autoreply]
max_per_hour = -1
team_digest_after = "twenty"
quarantine_digest_after = true
""")
    done = cli(path, "check-config")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 3, lines
    assert f"{path}: autoreply.max_per_hour: -1 is out of range, expected an integer >= 0" \
        in lines
    assert any(line.startswith(f"{path}: autoreply.team_digest_after: 'twenty' is not a whole")
               for line in lines)
    assert any(line.startswith(f"{path}: autoreply.quarantine_digest_after: True is not")
               for line in lines)


def _db_config(tmp_path: Path, database: str) -> Path:
    path = tmp_path / "seclistd.toml"
    path.write_text(f"""
[project]
name = "X"
security_address = "security@example.org"
[database]
{database}
[imap]
enabled = false
""")
    return path


def test_database_url_from_a_credential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """database.url_file: a PostgreSQL URL with its password is a secret like the others:
    a systemd credential in the service, the file beside the config when run by hand."""
    url = "postgresql://seclistd:pa55w0rd@db.example.org/seclistd"
    (tmp_path / "credentials").mkdir()
    (tmp_path / "credentials" / "database-url").write_text(url + "\n")
    path = _db_config(tmp_path, 'url_file = "credentials/database-url"')
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert config.load(str(path)).database.url == url

    creds = tmp_path / "run-creds"
    creds.mkdir()
    (creds / "credentials_database-url").write_text(url.replace("db.", "db2.") + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    settings = config.load(str(path))
    assert settings.database.url == url.replace("db.", "db2.")
    assert "pa55w0rd" not in repr(settings)


@pytest.mark.parametrize(("database", "content", "problem"), [
    ('url = "sqlite:///x.db"\nurl_file = "db-url"', "postgresql://u@h/d",
     "database.url: both url and url_file are set, expected one"),
    ('url_file = "missing-url"', None, "database.url_file: cannot read missing-url"),
    ('url_file = "db-url"', "\n", "database.url_file: is an empty file, expected a file"),
    ('url_file = "db-url"', "mysql://u:hunter2@h/d",
     "database.url_file: does not hold a database URL, expected one line such as"),
])
def test_database_url_file_problems(tmp_path: Path, database: str, content: str | None,
                                    problem: str):
    if content is not None:
        (tmp_path / "db-url").write_text(content)
    done = cli(_db_config(tmp_path, database), "check-config")
    assert done.returncode == 2
    assert problem in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "hunter2" not in done.stderr  # a bad URL in a secret file is never quoted
    assert "Traceback" not in done.stderr
