"""Refuse to touch a storage dir that a running registry container serves (when we can tell).

Deleting under a running registry leaves its blob-descriptor cache stale: it keeps answering
200 for deleted blobs and serves truncated data (docs/design.md §3).
"""

from __future__ import annotations

import os
from pathlib import Path

from layover.errors import LayoverError


def serving_containers(root: Path) -> list[str]:
    """Names of running containers with `root` (or a dir above or below it) bind-mounted."""
    try:
        import docker  # an engine is optional for `layover gc`; without one we cannot tell
        from docker.errors import DockerException

        client = docker.from_env(timeout=5)
        containers = client.containers.list()
    except (ImportError, DockerException, OSError):
        return []
    target = os.path.realpath(root)
    found = []
    for c in containers:
        for m in c.attrs.get("Mounts", []):
            src = os.path.realpath(m.get("Source", ""))
            if src and (target == src or target.startswith(src + os.sep) or src.startswith(target + os.sep)):
                found.append(c.name)
                break
    return found


def refuse_if_served(root: Path) -> None:
    names = serving_containers(root)
    if names:
        raise LayoverError(
            f"{root} is served by running container(s) {', '.join(names)}; stop them first "
            "(deleting under a running registry corrupts what it serves)"
        )


def restart_container(name: str) -> None:
    """Restart a registry container by name (`layover install --restart-container`), so that it
    forgets what its blob-descriptor cache holds about deleted blobs (docs/design.md §3)."""
    import docker
    from docker.errors import DockerException, NotFound

    from layover.errors import UsageError

    try:
        client = docker.from_env(timeout=60)
        container = client.containers.get(name)
        container.restart(timeout=10)
        container.reload()
    except NotFound:
        raise UsageError(
            f"--restart-container {name}: no such container; name the one serving the storage "
            "dir (docker ps), or restart your registry yourself"
        ) from None
    except DockerException as e:
        raise LayoverError(f"cannot restart container {name} ({e}); restart the registry yourself") from None
    if container.status != "running":
        raise LayoverError(
            f"container {name} is {container.status} after its restart; check `docker logs {name}`"
        )
