"""Registry credentials, found where skopeo finds them.

Mirrors `pkg/docker/config/config.go` of containers/image 5.23, the library Debian's skopeo 1.9.3
is built with, so that every request Layover makes itself uses the credentials skopeo would use.
For a reference HOST/REPO:

    registries.conf `credential-helpers` (default: only "containers-auth.json"), in order:
      "containers-auth.json" -> the auth files below; the first FILE with an entry wins
      any other NAME          -> `docker-credential-NAME get`, HOST on stdin

    auth files, in order (missing files count as empty):
      1. the explicit file: the side's flag (--src-authfile / --dest-authfile), else
         $REGISTRY_AUTH_FILE (skopeo's default for --authfile); else
         ${XDG_RUNTIME_DIR}/containers/auth.json, or /run/containers/$UID/auth.json when
         XDG_RUNTIME_DIR is unset (set but missing: skipped, like skopeo's warning)
      2. ${XDG_CONFIG_HOME:-$HOME/.config}/containers/auth.json
      3. $DOCKER_CONFIG/config.json, else $HOME/.docker/config.json
      4. $HOME/.dockercfg (legacy format: the file is the `auths` map)
      skopeo 1.9.3 searches 2-4 even after an explicit file (containers/image 5.24+ does not:
      `exclusive_explicit=True`).

    in one file:
      credHelpers[HOST]  -> `docker-credential-NAME get`; its answer (or none) ends this file
      auths[HOST/REPO], auths[HOST/parent/...], auths[HOST]   exact keys, longest first
      any auths key that normalises to HOST: http(s)://HOST/anything, docker.io aliases
      an entry with no "user:password" in `auth` counts as no entry (its identitytoken too)

Where we differ from skopeo, on purpose: a missing explicit file (flag or REGISTRY_AUTH_FILE)
is a CredentialsError (skopeo treats it as empty and goes anonymous); `credsStore` (Docker's
default helper, which containers/image ignores) is honoured only with `creds_store=True`.

Subprocesses (credential helpers) are not run here: the caller injects `helper`
(`layover.adapters.credential_helper.get`). Secrets never reach a message, a log or a repr.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import threading
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from layover.errors import CredentialsError

AUTH_FILES_HELPER = "containers-auth.json"  # the registries.conf name for "the auth files"


@dataclass(frozen=True)
class Credentials:
    """Username and password, or an identity (OAuth2 refresh) token. `source` names where they
    came from (file and entry, or helper) for messages; the secrets are kept out of repr."""

    username: str
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)
    source: str = ""


# (helper name, server) -> what `docker-credential-NAME get` answered; None = not logged in.
HelperGet = Callable[[str, str], "Credentials | None"]


@dataclass(frozen=True)
class AuthFile:
    path: Path
    origin: str  # the flag, "REGISTRY_AUTH_FILE", or "default"
    legacy: bool = False  # ~/.dockercfg: the whole file is the `auths` map

    @property
    def explicit(self) -> bool:
        return self.origin != "default"

    def describe(self) -> str:
        return f"{self.path} ({self.origin})" if self.explicit else str(self.path)


@dataclass(frozen=True)
class AuthSearch:
    """Where to look, in order. Build it with `auth_search`."""

    files: tuple[AuthFile, ...]
    flag: str  # the flag that sets the explicit file on this side, for messages
    helpers: tuple[str, ...] = (AUTH_FILES_HELPER,)
    creds_store: bool = False
    notes: tuple[str, ...] = ()  # places skipped, e.g. a missing XDG_RUNTIME_DIR

    def describe(self) -> str:
        """One line: every place looked in, in order."""
        places: list[str] = []
        for helper in self.helpers:
            if helper == AUTH_FILES_HELPER:
                places += [f.describe() for f in self.files]
            else:
                places.append(f"docker-credential-{helper}")
        text = ", ".join(places)
        return f"{text}; {'; '.join(self.notes)}" if self.notes else text


def auth_search(
    authfile: Path | None,
    *,
    flag: str,
    env: Mapping[str, str] | None = None,
    uid: int | None = None,
    helpers: tuple[str, ...] | None = None,
    exclusive_explicit: bool = False,
    creds_store: bool = False,
) -> AuthSearch:
    """The search for one side. `env` defaults to os.environ, `uid` to the process's;
    `helpers` to registries.conf's `credential-helpers` (see `registries_conf_helpers`)."""
    env = os.environ if env is None else env
    uid = os.getuid() if uid is None else uid
    home = _home(env)
    notes: list[str] = []
    files: list[AuthFile] = []
    if authfile is not None:
        files.append(AuthFile(Path(authfile), flag))
    elif env.get("REGISTRY_AUTH_FILE"):
        files.append(AuthFile(Path(env["REGISTRY_AUTH_FILE"]), "REGISTRY_AUTH_FILE"))
    elif env.get("XDG_RUNTIME_DIR"):
        runtime_dir = Path(env["XDG_RUNTIME_DIR"])
        if runtime_dir.exists():
            files.append(AuthFile(runtime_dir / "containers" / "auth.json", "default"))
        else:
            notes.append(f"XDG_RUNTIME_DIR={runtime_dir} does not exist, skipped")
    else:
        files.append(AuthFile(Path(f"/run/containers/{uid}/auth.json"), "default"))
    if not (files and files[0].explicit and exclusive_explicit):
        config_home = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else home / ".config"
        files.append(AuthFile(config_home / "containers" / "auth.json", "default"))
        docker_dir = Path(env["DOCKER_CONFIG"]) if env.get("DOCKER_CONFIG") else home / ".docker"
        files.append(AuthFile(docker_dir / "config.json", "default"))
        files.append(AuthFile(home / ".dockercfg", "default", legacy=True))
    if helpers is None:
        helpers = registries_conf_helpers(home)
    return AuthSearch(tuple(files), flag, helpers, creds_store, tuple(notes))


def registries_conf_helpers(
    home: Path,
    *,
    system_conf: Path = Path("/etc/containers/registries.conf"),
    system_dir: Path = Path("/etc/containers/registries.conf.d"),
) -> tuple[str, ...]:
    """registries.conf `credential-helpers`, merged as skopeo merges it: the user's file replaces
    the system one (and then only the user's drop-ins count); a drop-in that sets the key
    replaces the list. Unset everywhere -> ("containers-auth.json",)."""
    user_conf = home / ".config" / "containers" / "registries.conf"
    user_dir = home / ".config" / "containers" / "registries.conf.d"
    if user_conf.exists():
        main, dirs = user_conf, [user_dir]
    else:
        main, dirs = system_conf, [system_dir, user_dir]
    found: list[str] | None = None
    for path in [main, *(p for d in dirs for p in _drop_ins(d))]:
        value = _toml(path).get("credential-helpers")
        if value is None:
            continue
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise CredentialsError(f"{path}: credential-helpers must be a list of names; fix the file")
        found = list(value)
    return tuple(found) if found else (AUTH_FILES_HELPER,)


def find_credentials(
    search: AuthSearch, host: str, repository: str | None = None, *, helper: HelperGet | None = None
) -> Credentials | None:
    """Credentials for HOST (or HOST/REPOSITORY: namespaced entries), or None (anonymous).

    Raises CredentialsError for a missing explicit file, an unreadable file, bad JSON or a bad
    `auth` value, naming the file and the flag; for a failing helper only if no other helper
    found credentials (skopeo's rule)."""
    key = f"{host}/{repository}" if repository else host
    errors: list[CredentialsError] = []
    for name in search.helpers:
        try:
            if name == AUTH_FILES_HELPER:
                found = _from_files(search, key, host, helper)
            else:
                found = _ask(helper, name, host, search.flag, where="registries.conf credential-helpers")
        except CredentialsError as e:
            errors.append(e)
            continue
        if found is not None:
            return found
    if errors:
        raise errors[0]
    return None


class CredentialResolver:
    """Credentials per repository of one registry side, resolved once each; thread-safe."""

    def __init__(self, search: AuthSearch, helper: HelperGet | None = None) -> None:
        self.search = search
        self._helper = helper
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str | None], Credentials | None] = {}

    @property
    def flag(self) -> str:
        return self.search.flag

    def for_repository(self, host: str, repository: str | None) -> Credentials | None:
        with self._lock:
            if (host, repository) not in self._cache:
                self._cache[(host, repository)] = find_credentials(
                    self.search, host, repository, helper=self._helper
                )
            return self._cache[(host, repository)]

    def describe(self) -> str:
        return self.search.describe()


# --- one file --------------------------------------------------------------------------------
def _from_files(search: AuthSearch, key: str, host: str, helper: HelperGet | None) -> Credentials | None:
    for auth_file in search.files:
        found = _from_file(auth_file, key, host, search, helper)
        if found is not None:
            return found
    return None


def _from_file(
    auth_file: AuthFile, key: str, host: str, search: AuthSearch, helper: HelperGet | None
) -> Credentials | None:
    doc = _read(auth_file, search.flag)
    if doc is None:
        return None
    where = auth_file.describe()
    if auth_file.legacy:
        auths, cred_helpers, store = doc, {}, None
    else:
        auths = _object(_field(doc, "auths"), where, "auths", search.flag)
        cred_helpers = _object(_field(doc, "credHelpers"), where, "credHelpers", search.flag)
        store = _field(doc, "credsStore") if search.creds_store else None
    # Go's json.Unmarshal fails on any ill-typed entry, matched or not: so does this.
    for k, entry in auths.items():
        _entry(entry, k, auth_file, search.flag)
    for k, name in cred_helpers.items():
        if not isinstance(name, str):
            raise CredentialsError(
                f"{where}: credHelpers[{k!r}] is not a string; fix it or pass another file with {search.flag}"
            )
    # A credHelpers entry is exact (HOST only) and final for this file, found or not.
    if host in cred_helpers:
        return _ask(helper, cred_helpers[host], host, search.flag, where=f"credHelpers in {where}")
    if isinstance(store, str) and store:
        found = _ask(helper, store, host, search.flag, where=f"credsStore in {where}")
        if found is not None:
            return found
    keys = [host] if auth_file.legacy else list(_parents(key))
    for k in keys:
        if k in auths:
            return _decode(auths[k], k, auth_file, search.flag)
    wanted = _normalise_registry(host)
    for k, entry in auths.items():
        if _normalise_key(k, auth_file.legacy) == wanted:
            return _decode(entry, k, auth_file, search.flag)
    return None


def _read(auth_file: AuthFile, flag: str) -> dict | None:
    where = auth_file.describe()
    try:
        raw = auth_file.path.read_bytes()
    except FileNotFoundError:
        if auth_file.explicit:
            fix = (
                f"point {flag} at an existing file"
                if auth_file.origin == flag
                else (f"unset REGISTRY_AUTH_FILE or pass {flag}")
            )
            raise CredentialsError(f"{where}: no such file; {fix}") from None
        return None
    except OSError as e:
        raise CredentialsError(
            f"{where}: cannot read it ({e.strerror}); fix its permissions or pass another file with {flag}"
        ) from None
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as e:
        reason = "empty file" if not raw.strip() else f"invalid JSON: {type(e).__name__} at byte {_pos(e)}"
        raise CredentialsError(
            f"{where}: {reason}; fix it (a containers-auth.json) or pass another file with {flag}"
        ) from None
    if not isinstance(doc, dict):
        raise CredentialsError(
            f"{where}: not a JSON object; fix it (a containers-auth.json) or pass another file with {flag}"
        )
    return doc


def _entry(entry: object, key: str, auth_file: AuthFile, flag: str) -> tuple[str, str]:
    """(auth, identitytoken) of one `auths` entry; null counts as an empty entry."""
    if entry is None:
        return "", ""
    auth = _field(entry, "auth") if isinstance(entry, dict) else None
    token = _field(entry, "identitytoken") if isinstance(entry, dict) else None
    if not isinstance(entry, dict) or not isinstance(auth or "", str) or not isinstance(token or "", str):
        raise CredentialsError(
            f"{auth_file.describe()}: entry {key!r} is not an object with string "
            f"`auth`/`identitytoken`; fix it or pass another file with {flag}"
        )
    return str(auth or ""), str(token or "")


def _decode(entry: object, key: str, auth_file: AuthFile, flag: str) -> Credentials | None:
    where = auth_file.describe()
    auth, token = _entry(entry, key, auth_file, flag)
    try:
        decoded = base64.b64decode(auth.replace("\n", "").replace("\r", ""), validate=True)
        text = decoded.decode("utf-8")
    except (binascii.Error, ValueError):
        raise CredentialsError(
            f"{where}: entry {key!r}: `auth` is not base64 of user:password; fix it "
            f"or pass another file with {flag}"
        ) from None
    user, sep, password = text.partition(":")
    if not sep:
        # containers/image skips such entries (Docker writes empty ones next to a helper).
        return None
    return Credentials(user, password.strip("\x00"), token, f"{where}, entry {key!r}")


def _ask(helper: HelperGet | None, name: str, host: str, flag: str, *, where: str) -> Credentials | None:
    if helper is None:
        raise CredentialsError(
            f"{where} names docker-credential-{name} for {host} but no helper runner "
            "was given (internal error: use layover.adapters.credential_helper)"
        )
    return helper(name, host)


# --- keys ------------------------------------------------------------------------------------
def _parents(key: str) -> Iterator[str]:
    """HOST/a/b/c, HOST/a/b, HOST/a, HOST: the auth keys that match a reference, best first."""
    while True:
        yield key
        if "/" not in key:
            return
        key = key.rsplit("/", 1)[0]


def _normalise_key(key: str, legacy: bool) -> str:
    stripped = key.removeprefix("http://").removeprefix("https://")
    if legacy or stripped != key:
        stripped = stripped.split("/", 1)[0]
    return _normalise_registry(stripped)


def _normalise_registry(host: str) -> str:
    return "index.docker.io" if host in ("registry-1.docker.io", "docker.io") else host


# --- helpers ---------------------------------------------------------------------------------
def _field(doc: dict, name: str) -> object:
    """Go's encoding/json matches struct fields case-insensitively (exact match first)."""
    if name in doc:
        return doc[name]
    folded = name.casefold()
    for k, v in doc.items():
        if k.casefold() == folded:
            return v
    return None


def _object(value: object, where: str, name: str, flag: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CredentialsError(
            f"{where}: `{name}` is not a JSON object; fix it or pass another file with {flag}"
        )
    return value


def _home(env: Mapping[str, str]) -> Path:
    return Path(env["HOME"]) if env.get("HOME") else Path.home()


def _drop_ins(directory: Path) -> list[Path]:
    try:
        return sorted(p for p in directory.iterdir() if p.name.endswith(".conf") and not p.is_dir())
    except FileNotFoundError:
        return []
    except OSError as e:
        raise CredentialsError(f"{directory}: cannot list it ({e.strerror}); fix its permissions") from None


def _toml(path: Path) -> dict:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise CredentialsError(f"{path}: cannot read it ({e.strerror}); fix its permissions") from None
    except tomllib.TOMLDecodeError as e:
        raise CredentialsError(f"{path}: invalid TOML ({e}); skopeo refuses it too, fix the file") from None


def _pos(e: Exception) -> str:
    return str(getattr(e, "pos", getattr(e, "start", "?")))
