"""docker-credential-NAME helpers, called as containers/image calls them: a real script on PATH."""

from __future__ import annotations

import json
import logging
import os
import stat
import sys

import pytest

from layover.adapters import credential_helper
from layover.errors import CredentialsError

HOST = "harbor.example.com:8443"
SECRET = "s3cret-from-the-keychain"

SCRIPT = f"""#!{sys.executable}
import json, os, sys
server = sys.stdin.read()
with open(os.environ["HELPER_LOG"], "a") as log:
    log.write(json.dumps({{"argv": sys.argv[1:], "stdin": server}}) + "\\n")
if server == {HOST!r}:
    print(json.dumps({{"ServerURL": server, "Username": "robot", "Secret": {SECRET!r}}}))
elif server == "token.example.com":
    print(json.dumps({{"ServerURL": server, "Username": "<token>", "Secret": "refresh-{SECRET}"}}))
elif server == "broken.example.com":
    print("pass store is not initialised")
    sys.exit(1)
elif server == "garbage.example.com":
    print("not json")
else:
    print("credentials not found in native keychain")
    sys.exit(1)
"""


@pytest.fixture
def helper_on_path(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "docker-credential-layovertest"
    script.write_text(SCRIPT)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("HELPER_LOG", str(tmp_path / "calls.jsonl"))
    return tmp_path / "calls.jsonl"


def calls(log_path) -> list[dict]:
    return [json.loads(line) for line in log_path.read_text().splitlines()]


def test_get_sends_the_server_on_stdin_and_reads_the_answer(helper_on_path, caplog):
    caplog.set_level(logging.DEBUG)
    creds = credential_helper.get("layovertest", HOST)
    assert creds is not None
    assert (creds.username, creds.password, creds.identity_token) == ("robot", SECRET, "")
    assert creds.source == "credential helper docker-credential-layovertest"
    assert calls(helper_on_path) == [{"argv": ["get"], "stdin": HOST}]
    assert SECRET not in caplog.text


def test_token_username_means_identity_token(helper_on_path):
    creds = credential_helper.get("layovertest", "token.example.com")
    assert creds is not None and creds.username == "" and creds.identity_token == f"refresh-{SECRET}"


def test_not_logged_in_is_none(helper_on_path):
    assert credential_helper.get("layovertest", "unknown.example.com") is None


def test_failures_are_credentials_errors(helper_on_path):
    with pytest.raises(CredentialsError) as e:
        credential_helper.get("layovertest", "broken.example.com")
    assert str(e.value) == (
        "credential helper docker-credential-layovertest get broken.example.com exited 1: "
        "pass store is not initialised; run it by hand to see why"
    )
    with pytest.raises(CredentialsError, match="printed no JSON with Username and Secret"):
        credential_helper.get("layovertest", "garbage.example.com")
    with pytest.raises(
        CredentialsError, match=r"docker-credential-nosuchhelper .*command not found.*install it"
    ):
        credential_helper.get("nosuchhelper", HOST)


def test_resolver_runs_the_helper_named_in_cred_helpers(helper_on_path, tmp_path):
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    (home / ".docker/config.json").write_text(json.dumps({"credHelpers": {HOST: "layovertest"}}))
    env = {"HOME": str(home), "XDG_RUNTIME_DIR": str(tmp_path)}
    resolver = credential_helper.resolver(None, "--dest-authfile", env=env, helpers=("containers-auth.json",))
    creds = resolver.for_repository(HOST, "project/app")
    assert creds is not None and creds.username == "robot"
    assert calls(helper_on_path) == [{"argv": ["get"], "stdin": HOST}]
    assert resolver.for_repository("unknown.example.com", "project/app") is None
