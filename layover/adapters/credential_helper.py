"""Docker credential helpers (`docker-credential-NAME get`), as containers/image calls them.

The server (HOST[:PORT], no scheme) goes to the helper's stdin; it answers JSON
`{"ServerURL", "Username", "Secret"}` on stdout, or exits non-zero printing "credentials not
found in native keychain" when it has nothing. A Username of "<token>" means Secret is an
identity token. The answer is never logged: stdout is parsed and dropped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from layover.adapters.run import run
from layover.auth import CredentialResolver, Credentials, auth_search
from layover.errors import CommandError, CredentialsError

_NOT_FOUND = "credentials not found in native keychain"


def get(name: str, server: str, *, timeout: float = 30.0) -> Credentials | None:
    """Ask `docker-credential-NAME` for SERVER's credentials; None when it has none."""
    program = f"docker-credential-{name}"
    try:
        result = run([program, "get"], input=server.encode(), timeout=timeout, check=False)
    except CommandError as e:  # not installed, or hung
        raise CredentialsError(
            f"credential helper {program} for {server}: {e}; install it or remove it "
            "from the auth file's credHelpers / registries.conf"
        ) from None
    out = result.text.strip()
    if result.returncode != 0:
        if _NOT_FOUND in out or _NOT_FOUND in result.stderr:
            return None
        # A failing helper prints its reason on stdout; that is not the secret (it has none).
        said = out or result.stderr.strip()
        reason = said.splitlines()[0][:160] if said else ""
        raise CredentialsError(
            f"credential helper {program} get {server} exited {result.returncode}"
            f"{': ' + reason if reason else ''}; run it by hand to see why"
        )
    try:
        doc = json.loads(out)
        username, secret = doc["Username"], doc["Secret"]
    except (ValueError, KeyError, TypeError):
        raise CredentialsError(
            f"credential helper {program} get {server} printed no JSON with "
            "Username and Secret; check the helper"
        ) from None
    if not isinstance(username, str) or not isinstance(secret, str):
        raise CredentialsError(f"credential helper {program} get {server}: Username/Secret are not strings")
    source = f"credential helper {program}"
    if username == "<token>":
        return Credentials("", "", secret, source)
    return Credentials(username, secret, "", source)


def resolver(
    authfile: Path | None,
    flag: str,
    *,
    env: Mapping[str, str] | None = None,
    helpers: tuple[str, ...] | None = None,
    exclusive_explicit: bool = False,
    creds_store: bool = False,
) -> CredentialResolver:
    """A CredentialResolver for one side (flag "--src-authfile" or "--dest-authfile") that
    searches as skopeo does (see layover.auth) and runs real credential helpers."""
    search = auth_search(
        authfile,
        flag=flag,
        env=os.environ if env is None else env,
        helpers=helpers,
        exclusive_explicit=exclusive_explicit,
        creds_store=creds_store,
    )
    return CredentialResolver(search, get)
