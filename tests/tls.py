"""What tests need to stand up a registry the way a customer runs one: a CA made here with
openssl, a server certificate for 127.0.0.1 signed by it, an htpasswd file, and a
containers-auth.json.

    secure_registry_files(base, user) -> SecureFiles   all of it for a TLS + basic-auth registry
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certificates(d: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it: (ca.crt, server.crt, server.key)."""
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "2", "-subj", "/CN=layover test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )  # fmt: skip
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1",
        cwd=d,
    )  # fmt: skip
    (d / "ext.cnf").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
    )
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf",
        cwd=d,
    )  # fmt: skip
    return d / "ca.crt", d / "server.crt", d / "server.key"


def write_authfile(path: Path, host: str, user: str, password: str) -> Path:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"auths": {host: {"auth": token}}}))
    path.chmod(0o600)
    return path


def write_htpasswd(path: Path, user: str, password: str) -> Path:
    """A bcrypt htpasswd file with one user (docker-registry's basic auth reads only bcrypt)."""
    line = subprocess.run(
        ["htpasswd", "-nbB", user, password], check=True, capture_output=True, text=True
    ).stdout.strip()
    path.write_text(line + "\n")
    return path


@dataclass(frozen=True)
class SecureFiles:
    ca_dir: Path  # holds ca.crt only: a containers-certs.d directory
    cert: Path  # the server's, for 127.0.0.1
    key: Path
    htpasswd: Path
    password: str


def secure_registry_files(base: Path, user: str) -> SecureFiles:
    """Under `base`: certs/ (CA and server certificate), ca/ca.crt, and htpasswd holding `user`
    with a fresh password."""
    certs = base / "certs"
    certs.mkdir()
    ca, cert, key = make_certificates(certs)
    ca_dir = base / "ca"
    ca_dir.mkdir()
    shutil.copy(ca, ca_dir / "ca.crt")
    password = f"pw-{uuid.uuid4().hex}"
    return SecureFiles(ca_dir, cert, key, write_htpasswd(base / "htpasswd", user, password), password)
