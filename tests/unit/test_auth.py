"""Credential resolution follows skopeo 1.9.3 (containers/image 5.23): which file, which entry."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from layover.auth import (
    AUTH_FILES_HELPER,
    CredentialResolver,
    Credentials,
    auth_search,
    find_credentials,
    registries_conf_helpers,
)
from layover.errors import CredentialsError

HOST = "reg.example.com:5000"
FLAG = "--src-authfile"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def write(path: Path, auths: dict, **extra: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"auths": {k: {"auth": b64(v)} for k, v in auths.items()}, **extra}))
    return path


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    """A HOME and XDG_RUNTIME_DIR of our own; nothing else set."""
    (tmp_path / "home").mkdir()
    (tmp_path / "run").mkdir()
    return {"HOME": str(tmp_path / "home"), "XDG_RUNTIME_DIR": str(tmp_path / "run")}


def files(env: dict[str, str]) -> dict[str, Path]:
    home, run = Path(env["HOME"]), Path(env["XDG_RUNTIME_DIR"])
    return {
        "runtime": run / "containers/auth.json",
        "config": home / ".config/containers/auth.json",
        "docker": home / ".docker/config.json",
        "legacy": home / ".dockercfg",
    }


def lookup(env, authfile=None, repository="team/app", **kw) -> Credentials | None:
    search = auth_search(authfile, flag=FLAG, env=env, uid=1234, helpers=(AUTH_FILES_HELPER,), **kw)
    return find_credentials(search, HOST, repository)


def who(creds: Credentials | None) -> str | None:
    return None if creds is None else f"{creds.username}:{creds.password}"


# --- which file ------------------------------------------------------------------------------
def test_every_default_file_in_skopeos_order(env):
    f = files(env)
    write(f["legacy"], {HOST: "legacy:p"})
    f["legacy"].write_text(json.dumps({f"https://{HOST}/v1/": {"auth": b64("legacy:p")}}))
    assert who(lookup(env)) == "legacy:p"
    write(f["docker"], {HOST: "docker:p"})
    assert who(lookup(env)) == "docker:p"
    write(f["config"], {HOST: "config:p"})
    assert who(lookup(env)) == "config:p"
    write(f["runtime"], {HOST: "runtime:p"})
    assert who(lookup(env)) == "runtime:p"
    rfile = write(Path(env["HOME"]) / "registry-auth.json", {HOST: "env:p"})
    assert who(lookup({**env, "REGISTRY_AUTH_FILE": str(rfile)})) == "env:p"
    flag = write(Path(env["HOME"]) / "flag.json", {HOST: "flag:p"})
    creds = lookup({**env, "REGISTRY_AUTH_FILE": str(rfile)}, authfile=flag)
    assert who(creds) == "flag:p"
    assert creds is not None and creds.source == f"{flag} (--src-authfile), entry '{HOST}'"


def test_explicit_file_replaces_only_the_runtime_file(env):
    # REGISTRY_AUTH_FILE (or the flag) takes the place of ${XDG_RUNTIME_DIR}/containers/auth.json:
    # with skopeo 1.9.3 the user's default files are still searched after it.
    f = files(env)
    write(f["runtime"], {HOST: "runtime:p"})
    write(f["docker"], {HOST: "docker:p"})
    other = write(Path(env["HOME"]) / "other.json", {"elsewhere.example.com": "x:y"})
    env = {**env, "REGISTRY_AUTH_FILE": str(other)}
    assert who(lookup(env)) == "docker:p"
    # containers/image 5.24+ stops at an explicit file
    assert lookup(env, exclusive_explicit=True) is None
    search = auth_search(None, flag=FLAG, env=env, uid=0, helpers=(AUTH_FILES_HELPER,))
    assert [f.origin for f in search.files] == ["REGISTRY_AUTH_FILE", "default", "default", "default"]


def test_xdg_config_home_and_docker_config_move_the_defaults(env, tmp_path):
    write(tmp_path / "xdg/containers/auth.json", {HOST: "xdg:p"})
    write(tmp_path / "dcfg/config.json", {HOST: "dcfg:p"})
    write(files(env)["config"], {HOST: "ignored:p"})
    write(files(env)["docker"], {HOST: "ignored:p"})
    assert who(lookup({**env, "DOCKER_CONFIG": str(tmp_path / "dcfg")})) == "ignored:p"  # config wins
    assert who(lookup({**env, "XDG_CONFIG_HOME": str(tmp_path / "xdg")})) == "xdg:p"
    files(env)["config"].unlink()
    assert who(lookup({**env, "DOCKER_CONFIG": str(tmp_path / "dcfg")})) == "dcfg:p"


def test_runtime_dir_unset_or_missing(env):
    no_runtime = {"HOME": env["HOME"]}
    search = auth_search(None, flag=FLAG, env=no_runtime, uid=1234, helpers=(AUTH_FILES_HELPER,))
    assert search.files[0].path == Path("/run/containers/1234/auth.json")
    missing = {**env, "XDG_RUNTIME_DIR": env["XDG_RUNTIME_DIR"] + "-gone"}
    search = auth_search(None, flag=FLAG, env=missing, uid=1234, helpers=(AUTH_FILES_HELPER,))
    assert search.files[0].path == files(env)["config"]  # skipped, as skopeo warns and moves on
    assert "does not exist" in search.describe()


# --- which entry -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({f"{HOST}/team/app": "repo:p", f"{HOST}/team": "ns:p", HOST: "host:p"}, "repo:p"),
        ({f"{HOST}/team": "ns:p", HOST: "host:p"}, "ns:p"),
        ({f"{HOST}/other": "other:p", HOST: "host:p"}, "host:p"),
        ({f"{HOST}/other": "other:p"}, None),  # a sibling namespace never matches
        ({f"https://{HOST}": "https:p"}, "https:p"),
        ({f"http://{HOST}/v1/": "http:p"}, "http:p"),
        ({f"https://{HOST}/v2/team": "url-path:p"}, "url-path:p"),  # a URL key means its host
        ({f"https://{HOST}": "url:p", HOST: "exact:p"}, "exact:p"),  # exact keys first
        ({f"{HOST}/team/app/sub": "deeper:p"}, None),
        ({"reg.example.com": "no-port:p"}, None),  # host:port is matched whole
    ],
)
def test_key_matching(env, keys, expected):
    write(files(env)["docker"], keys)
    assert who(lookup(env)) == expected


def test_docker_hub_aliases_are_one_registry(env):
    files(env)["docker"].parent.mkdir(parents=True)
    files(env)["docker"].write_text(
        json.dumps({"auths": {"https://index.docker.io/v1/": {"auth": b64("hub:p")}}})
    )
    search = auth_search(None, flag=FLAG, env=env, uid=0, helpers=(AUTH_FILES_HELPER,))
    assert who(find_credentials(search, "docker.io", "library/debian")) == "hub:p"


def test_entries_without_user_and_password_are_skipped(env):
    f = files(env)
    f["runtime"].parent.mkdir(parents=True)
    # Docker leaves `{}` entries next to a credential helper; "nocolon" decodes without ":"
    f["runtime"].write_text(json.dumps({"auths": {HOST: {}}}))
    write(f["config"], {HOST: "nocolon"})
    write(f["docker"], {HOST: "docker:p"})
    assert who(lookup(env)) == "docker:p"


def test_password_may_contain_colons_and_identity_tokens_ride_along(env):
    files(env)["docker"].parent.mkdir(parents=True)
    files(env)["docker"].write_text(
        json.dumps({"auths": {HOST: {"auth": b64("robot$ci:pa:ss\x00"), "identitytoken": "refresh-me"}}})
    )
    creds = lookup(env)
    assert creds is not None
    assert (creds.username, creds.password, creds.identity_token) == ("robot$ci", "pa:ss", "refresh-me")


def test_json_field_names_match_case_insensitively_like_go(env):
    files(env)["docker"].parent.mkdir(parents=True)
    files(env)["docker"].write_text(json.dumps({"Auths": {HOST: {"Auth": b64("go:p")}}}))
    assert who(lookup(env)) == "go:p"


def test_secrets_stay_out_of_repr():
    creds = Credentials("bot", "hunter2-secret", "tok-secret", "somewhere")
    assert "hunter2" not in repr(creds) and "tok-secret" not in repr(creds)


# --- helpers ---------------------------------------------------------------------------------
class Helpers:
    """Records calls; answers from a table (name -> Credentials or None)."""

    def __init__(self, table: dict[str, Credentials | None]) -> None:
        self.table = table
        self.calls: list[tuple[str, str]] = []

    def __call__(self, name: str, server: str) -> Credentials | None:
        self.calls.append((name, server))
        return self.table[name]


def test_cred_helpers_entry_is_final_for_its_file(env):
    f = files(env)
    write(f["config"], {HOST: "same-file:p"}, credHelpers={HOST: "vault"})
    write(f["docker"], {HOST: "docker:p"})
    helper = Helpers({"vault": Credentials("v", "p", source="credential helper docker-credential-vault")})
    search = auth_search(None, flag=FLAG, env=env, uid=0, helpers=(AUTH_FILES_HELPER,))
    assert who(find_credentials(search, HOST, "team/app", helper=helper)) == "v:p"
    assert helper.calls == [("vault", HOST)]  # the host only, never the repository
    # the helper knows nothing: the same file's auths are NOT used, the next file is
    helper = Helpers({"vault": None})
    assert who(find_credentials(search, HOST, "team/app", helper=helper)) == "docker:p"


def test_creds_store_only_when_asked(env):
    write(files(env)["docker"], {HOST: "file:p"}, credsStore="desktop")
    helper = Helpers(
        {"desktop": Credentials("store", "p", source="credential helper docker-credential-desktop")}
    )
    plain = auth_search(None, flag=FLAG, env=env, uid=0, helpers=(AUTH_FILES_HELPER,))
    assert who(find_credentials(plain, HOST, "a", helper=helper)) == "file:p"  # containers/image ignores it
    store = auth_search(None, flag=FLAG, env=env, uid=0, helpers=(AUTH_FILES_HELPER,), creds_store=True)
    assert who(find_credentials(store, HOST, "a", helper=helper)) == "store:p"
    assert who(find_credentials(store, HOST, "a", helper=Helpers({"desktop": None}))) == "file:p"


def test_registries_conf_helpers_come_in_their_order(env):
    write(files(env)["docker"], {HOST: "file:p"})
    helper = Helpers({"pass": Credentials("pass", "p", source="credential helper docker-credential-pass")})
    first = auth_search(None, flag=FLAG, env=env, uid=0, helpers=("pass", AUTH_FILES_HELPER))
    assert who(find_credentials(first, HOST, "a", helper=helper)) == "pass:p"
    last = auth_search(None, flag=FLAG, env=env, uid=0, helpers=(AUTH_FILES_HELPER, "pass"))
    assert who(find_credentials(last, HOST, "a", helper=helper)) == "file:p"
    assert "docker-credential-pass" in last.describe()


def test_registries_conf_user_file_replaces_the_system_one(tmp_path):
    home = tmp_path / "home"
    system = tmp_path / "etc/registries.conf"
    system_dir = tmp_path / "etc/registries.conf.d"
    system_dir.mkdir(parents=True)
    system.write_text('credential-helpers = ["sys", "containers-auth.json"]\n')
    kw = {"system_conf": system, "system_dir": system_dir}
    assert registries_conf_helpers(home, **kw) == ("sys", "containers-auth.json")
    (system_dir / "50-x.conf").write_text('credential-helpers = ["dropin"]\n')
    (system_dir / "10-y.conf").write_text("unqualified-search-registries = []\n")
    assert registries_conf_helpers(home, **kw) == ("dropin",)
    user = home / ".config/containers/registries.conf"
    user.parent.mkdir(parents=True)
    user.write_text("# nothing set\n")
    assert registries_conf_helpers(home, **kw) == (AUTH_FILES_HELPER,)
    (tmp_path / "etc/registries.conf").write_text("credential-helpers = [\n")
    user.unlink()
    with pytest.raises(CredentialsError, match=r"registries.conf: invalid TOML"):
        registries_conf_helpers(home, **kw)


def test_resolver_caches_per_repository(env):
    write(files(env)["docker"], {f"{HOST}/team": "team:p", HOST: "host:p"})
    resolver = CredentialResolver(auth_search(None, flag=FLAG, env=env, uid=0, helpers=(AUTH_FILES_HELPER,)))
    assert who(resolver.for_repository(HOST, "team/app")) == "team:p"
    assert who(resolver.for_repository(HOST, "other/app")) == "host:p"
    assert who(resolver.for_repository(HOST, None)) == "host:p"
    files(env)["docker"].unlink()
    assert who(resolver.for_repository(HOST, "team/app")) == "team:p"  # resolved once


# --- bad files -------------------------------------------------------------------------------
def one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text
    return text


def test_missing_explicit_file_names_the_flag(env, tmp_path):
    with pytest.raises(CredentialsError) as e:
        lookup(env, authfile=tmp_path / "nope.json")
    missing = tmp_path / "nope.json"
    assert (
        one_line(e) == f"{missing} (--src-authfile): no such file; point --src-authfile at an existing file"
    )


def test_missing_registry_auth_file_names_the_variable(env, tmp_path):
    with pytest.raises(CredentialsError) as e:
        lookup({**env, "REGISTRY_AUTH_FILE": str(tmp_path / "nope.json")})
    assert one_line(e) == (
        f"{tmp_path / 'nope.json'} (REGISTRY_AUTH_FILE): no such file; "
        "unset REGISTRY_AUTH_FILE or pass --src-authfile"
    )


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ('{"auths": {', "invalid JSON"),
        ("", "empty file"),
        ("[1, 2]", "not a JSON object"),
        ('{"auths": []}', "`auths` is not a JSON object"),
        ('{"auths": {"other.example.com": {"auth": 7}}}', "entry 'other.example.com' is not an object"),
        ('{"credHelpers": {"other.example.com": 1}}', "credHelpers['other.example.com'] is not a string"),
    ],
)
def test_bad_files_name_the_file_and_the_flag(env, tmp_path, content, reason):
    bad = tmp_path / "auth.json"
    bad.write_text(content)
    with pytest.raises(CredentialsError) as e:
        lookup(env, authfile=bad)
    text = one_line(e)
    assert text.startswith(f"{bad} (--src-authfile): ") and reason in text and "--src-authfile" in text


def test_bad_base64_names_the_entry_not_the_secret(env, tmp_path):
    bad = tmp_path / "auth.json"
    bad.write_text(json.dumps({"auths": {HOST: {"auth": "hunter2-not-base64!"}}}))
    with pytest.raises(CredentialsError) as e:
        lookup(env, authfile=bad)
    text = one_line(e)
    assert f"entry '{HOST}'" in text and "hunter2" not in text


def test_unreadable_file(env, tmp_path):
    (tmp_path / "dir.json").mkdir()  # root reads any file; a directory is unreadable as one
    with pytest.raises(
        CredentialsError, match=r"dir.json \(--src-authfile\): cannot read it .*--src-authfile"
    ):
        lookup(env, authfile=tmp_path / "dir.json")


def test_a_broken_default_file_matters_only_if_reached(env):
    f = files(env)
    f["docker"].parent.mkdir(parents=True)
    f["docker"].write_text("{not json")
    write(f["config"], {HOST: "config:p"})
    assert who(lookup(env)) == "config:p"  # found before the broken file
    f["config"].unlink()
    with pytest.raises(CredentialsError, match=r"\.docker/config\.json: invalid JSON"):
        lookup(env)
