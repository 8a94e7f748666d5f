"""skopeo 1.9.3: copy images between registries and tell what moved.

`copy` always runs `skopeo --debug copy --all --preserve-digests --retry-times 0`:
- `--all` keeps every platform of an index; `--preserve-digests` makes skopeo fail rather than
  re-serialise an index it does not fully understand (docs/design.md §3);
- `--retry-times 0` because retries belong to the caller (Prefect task retries), one layer only;
- `--debug` because skopeo never reports skipped blobs otherwise. From its stderr we read
  "Upload of layer sha256:X complete" (copied) and the destination checks "Checking
  /v2/<repo>/blobs/sha256:X" (every blob the destination was asked about); a blob checked and
  never uploaded was skipped ("Skipping blob ... (already present)", a cross-repo mount, or a
  config that "... already exists").

Failures are classified from skopeo's final `level=fatal` line only: the debug lines before it
mention "not present", digests and HTTPS fallbacks on every successful run.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from layover.adapters.run import run
from layover.errors import (
    AuthError,
    CommandError,
    ImageNotFoundError,
    LayoverError,
    TLSError,
    TransientCommandError,
)
from layover.naming import name
from layover.reference import Digest

SKOPEO = "skopeo"

_UPLOADED = re.compile(r"Upload of layer (sha256:[0-9a-f]{64}) complete")
_CHECKED = re.compile(r"Checking /v2/\S+/blobs/(sha256:[0-9a-f]{64})")
_SKIPPED = re.compile(r"Skipping blob (sha256:[0-9a-f]{64}) \(already present\)")
_FATAL = re.compile(r'level=fatal msg="(.*)"\s*$')

_TRANSIENT = re.compile(
    r"connection refused|connection reset|broken pipe|\bEOF\b|i/o timeout|TLS handshake timeout"
    r"|no route to host|network is unreachable|server misbehaving|timed out|toomanyrequests"
    r"|(?:status(?: code)?(?: from registry)?:? |StatusCode: )5\d\d\b",
    re.IGNORECASE,
)
_AUTH = re.compile(
    r"unauthorized|\bdenied\b|authentication required|(?:status(?: code)?:? |StatusCode: )40[13]\b",
    re.IGNORECASE,
)
_TLS = re.compile(
    r"x509:|certificate signed by unknown authority|certificate is not valid|tls: failed to verify"
    r"|server gave HTTP response to HTTPS client",
    re.IGNORECASE,
)
_NOT_FOUND = re.compile(r"manifest unknown|name unknown|blob unknown|not found", re.IGNORECASE)
# Errors on the writing side: a "manifest blob unknown" there is our bug or a broken
# destination, not a missing source image.
_DEST_SIDE = re.compile(r"^(?:writing (?:blob|manifest)|trying to reuse blob|uploading)", re.IGNORECASE)

HINT_TRANSIENT = "network or registry hiccup: retrying may help"
HINT_NOT_FOUND = "the source registry has no such image: check the reference in images.list"
HINT_READ_ONLY = "the destination registry refused the write (405): is it in read-only mode?"


def hint_auth() -> str:
    """What to check when a registry refuses access, named as the user gave the setting."""
    return (
        f"the registry refused access: check the credentials ({name('src_authfile')}, or "
        f"{name('src_credentials_block')}) and that the repository exists"
    )


def hint_tls() -> str:
    return (
        f"the registry's TLS certificate did not verify (or it speaks plain HTTP): give its CA "
        f"with {name('src_cert_dir')} or turn verification off for it ({name('src_tls_verify')})"
    )


@dataclass(frozen=True)
class CopyResult:
    copied: frozenset[Digest]  # blobs uploaded to the destination
    skipped: frozenset[Digest]  # blobs the destination already had (or mounted from another repo)
    manifest_digest: Digest | None  # what the destination tag now points at (index digest with --all)
    seconds: float


def copy(
    src_ref: str,
    dst_ref: str,
    *,
    src_tls_verify: bool = True,
    dest_tls_verify: bool = False,
    src_authfile: Path | None = None,
    src_cert_dir: Path | None = None,
    timeout: float = 600,
) -> CopyResult:
    """Copy src_ref to dst_ref: HOST/REPO[:TAG|@DIGEST], with or without "docker://"."""
    with tempfile.TemporaryDirectory(prefix="layover-skopeo-") as tmp:
        digestfile = Path(tmp) / "digest"
        argv = [
            SKOPEO,
            "--debug",
            "copy",
            "--all",
            "--preserve-digests",
            "--retry-times",
            "0",
            f"--src-tls-verify={_bool(src_tls_verify)}",
            f"--dest-tls-verify={_bool(dest_tls_verify)}",
            "--digestfile",
            str(digestfile),
        ]
        if src_authfile is not None:
            argv += ["--src-authfile", str(src_authfile)]
        if src_cert_dir is not None:
            argv += ["--src-cert-dir", str(src_cert_dir)]
        argv += [_docker(src_ref), _docker(dst_ref)]
        result = run(argv, timeout=timeout, classify=classify)
        manifest_text = digestfile.read_text().strip() if digestfile.exists() else ""
    copied, skipped = parse_debug(result.stderr)
    manifest_digest = Digest.parse(manifest_text) if Digest.is_valid(manifest_text) else None
    return CopyResult(copied, skipped, manifest_digest, result.seconds)


def inspect_digest(
    ref: str, *, tls_verify: bool = True, authfile: Path | None = None, timeout: float = 120
) -> Digest:
    """The digest of the exact manifest (or index) bytes `docker://ref` serves."""
    argv = [SKOPEO, "inspect", "--raw", "--retry-times", "0", f"--tls-verify={_bool(tls_verify)}"]
    if authfile is not None:
        argv += ["--authfile", str(authfile)]
    argv.append(_docker(ref))
    result = run(argv, timeout=timeout, classify=classify)
    return Digest(hashlib.sha256(result.stdout).hexdigest())


def parse_debug(stderr: str) -> tuple[frozenset[Digest], frozenset[Digest]]:
    """(copied, skipped) blob digests from the stderr of a successful `skopeo --debug copy`."""
    copied = {Digest.parse(d) for d in _UPLOADED.findall(stderr)}
    checked = {Digest.parse(d) for d in _CHECKED.findall(stderr)}
    checked |= {Digest.parse(d) for d in _SKIPPED.findall(stderr)}
    return frozenset(copied), frozenset(checked - copied)


def fatal_message(stderr: str) -> str:
    """skopeo's final error: the last `level=fatal` message, else the last non-empty line."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        m = _FATAL.search(line)
        if m:
            return m.group(1).replace('\\"', '"')
    return lines[-1] if lines else ""


def essential(message: str) -> str:
    """skopeo's fatal message without what the per-image line already says: the leading
    "initializing source docker://<ref>: " and a repeated "X: X" tail."""
    text = re.sub(r"^initializing source docker://\S+: ", "", message.strip().removesuffix("\\n"))
    head, sep, last = text.rpartition(": ")
    if (sep and head.endswith(": " + last)) or (sep and head.rpartition(": ")[2] == last):
        text = head
    return text


def classify(argv: Sequence[str], returncode: int, stderr: str) -> LayoverError:
    """Map a failed skopeo run to the error tree by its final fatal line: Transient, TLS, auth,
    not found, or a plain CommandError. skopeo's whole stderr stays in `detail` for the logs;
    the message carries only the essential part of the fatal line."""
    message = fatal_message(stderr)
    short = essential(message)
    dest_side = bool(_DEST_SIDE.search(message))
    if _TRANSIENT.search(message):
        return TransientCommandError(argv, returncode, stderr, hint=HINT_TRANSIENT, summary=short)
    if _TLS.search(message):
        return TLSError(short, detail=stderr, hint=hint_tls())
    if _AUTH.search(message):
        return AuthError(short, detail=stderr, hint=hint_auth())
    if _NOT_FOUND.search(message) and not dest_side:
        return ImageNotFoundError(short, detail=stderr, hint=HINT_NOT_FOUND)
    if "Method not allowed" in message:
        return CommandError(argv, returncode, stderr, hint=HINT_READ_ONLY, summary=short)
    return CommandError(argv, returncode, stderr, summary=short)


def _docker(ref: str) -> str:
    # Only the docker:// transport: registries on both ends.
    return ref if ref.startswith("docker://") else f"docker://{ref}"


def _bool(value: bool) -> str:
    return "true" if value else "false"
