"""Provide a registry container image without the internet.

`registry:2` is used when the engine already has it. Otherwise we build
`layover/registry:2.8.2-debian` from Debian's `docker-registry` package on this host: a rootfs
tarball (the binary, the shared libraries `ldd` lists, a minimal config, /etc/passwd, /tmp) made
with tarfile and `docker import`ed with ENTRYPOINT/CMD set, so no Dockerfile build (and no base
image pull) is needed.

    python -m layover.adapters.registry_image     # ensures the image, prints its name
"""

from __future__ import annotations

import hashlib
import io
import re
import sys
import tarfile
import time
from pathlib import Path, PurePosixPath

import docker
import docker.errors

from layover.adapters.run import run
from layover.errors import CommandError, RegistryError

UPSTREAM_IMAGE = "registry:2"
LOCAL_REPOSITORY = "layover/registry"
LOCAL_TAG = "2.8.2-debian"
LOCAL_IMAGE = f"{LOCAL_REPOSITORY}:{LOCAL_TAG}"
REGISTRY_BIN = Path("/usr/bin/docker-registry")
CONFIG_PATH = "/etc/docker/registry/config.yml"

# Overridden at run time by the config RegistryManager bind-mounts; this one only makes the image
# usable on its own (docker run -p ... layover/registry:2.8.2-debian).
_DEFAULT_CONFIG = b"""\
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: /var/lib/registry
  delete:
    enabled: true
http:
  addr: :5000
"""
_PASSWD = b"root:x:0:0:root:/root:/usr/bin/docker-registry\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
_GROUP = b"root:x:0:\nnogroup:x:65534:\n"
_LDD_PATH = re.compile(r"(?:=>\s*)?(/\S+)\s+\(0x[0-9a-f]+\)")


def ensure_registry_image(client: docker.DockerClient) -> str:
    """Return the name of a registry image the engine has, building ours if needed."""
    for name in (UPSTREAM_IMAGE, LOCAL_IMAGE):
        try:
            client.images.get(name)
            return name
        except docker.errors.ImageNotFound:
            continue
        except docker.errors.APIError as e:
            raise RegistryError(
                f"docker engine failed to look up image {name}: {e}; is dockerd healthy? run scripts/setup.sh"
            ) from None
    build_registry_image(client)
    return LOCAL_IMAGE


def build_registry_image(client: docker.DockerClient) -> str:
    if not REGISTRY_BIN.is_file():
        raise RegistryError(
            f"no image {UPSTREAM_IMAGE} in the engine and {REGISTRY_BIN} is missing, so "
            f"{LOCAL_IMAGE} cannot be built; apt-get install docker-registry (scripts/setup.sh does)"
        )
    data = rootfs_tarball()
    binary_sha = hashlib.sha256(REGISTRY_BIN.read_bytes()).hexdigest()
    changes = [
        f'ENTRYPOINT ["{REGISTRY_BIN}"]',
        f'CMD ["serve", "{CONFIG_PATH}"]',
        "LABEL layover=1",
        "LABEL layover.image=registry",
        f"LABEL layover.registry-binary-sha256={binary_sha}",
    ]
    try:
        client.api.import_image_from_data(data, repository=LOCAL_REPOSITORY, tag=LOCAL_TAG, changes=changes)
        client.images.get(LOCAL_IMAGE)
    except docker.errors.DockerException as e:
        raise RegistryError(
            f"docker import of {LOCAL_IMAGE} failed: {e}; is dockerd running? run scripts/setup.sh"
        ) from None
    return LOCAL_IMAGE


def shared_libraries(binary: Path) -> list[Path]:
    """The absolute paths `ldd` lists for binary; empty for a static binary."""
    result = run(["ldd", str(binary)], timeout=30, check=False)
    if result.returncode != 0:
        # ldd exits 1 with "not a dynamic executable" for static binaries: nothing to copy.
        if "not a dynamic executable" in result.text + result.stderr:
            return []
        raise CommandError(
            result.argv,
            result.returncode,
            result.stderr,
            hint=f"cannot list the shared libraries of {binary}",
        )
    return parse_ldd(result.text)


def parse_ldd(output: str) -> list[Path]:
    paths = []
    for line in output.splitlines():
        m = _LDD_PATH.search(line)
        if m:
            paths.append(Path(m.group(1)))
    return paths


def rootfs_tarball() -> bytes:
    """An uncompressed tar of the minimal registry root filesystem."""
    buf = io.BytesIO()
    now = int(time.time())
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs: set[PurePosixPath] = set()

        def add_dir(path: PurePosixPath, mode: int = 0o755) -> None:
            for parent in reversed([path, *path.parents]):
                if str(parent) in ("/", ".") or parent in dirs:
                    continue
                info = tarfile.TarInfo(str(parent).lstrip("/"))
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, now
                tar.addfile(info)
                dirs.add(parent)

        def add_file(path: str, content: bytes, mode: int = 0o644) -> None:
            p = PurePosixPath(path)
            add_dir(p.parent)
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode, info.mtime = len(content), mode, now
            tar.addfile(info, io.BytesIO(content))

        add_file(str(REGISTRY_BIN), REGISTRY_BIN.read_bytes(), 0o755)
        # Copied as regular files at the path the loader asks for: symlink targets such as
        # /lib -> usr/lib need not exist in the image.
        for lib in shared_libraries(REGISTRY_BIN):
            add_file(str(lib), lib.resolve().read_bytes(), 0o755)
        add_file(CONFIG_PATH, _DEFAULT_CONFIG)
        add_file("/etc/passwd", _PASSWD)
        add_file("/etc/group", _GROUP)
        add_dir(PurePosixPath("/var/lib/registry"))
        add_dir(PurePosixPath("/tmp"), 0o1777)
    return buf.getvalue()


def main() -> int:
    from layover.adapters.registry import docker_client

    try:
        print(ensure_registry_image(docker_client()))
    except (RegistryError, CommandError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
