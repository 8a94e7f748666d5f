"""sha256 over files and file ranges: the one implementation verify, repair and the tar
writer share.

Reads go into one 1 MiB buffer per thread: allocating it per file would cost more than hashing a
small blob, and hashlib releases the GIL on large updates, so threads hash big blobs in parallel.
"""

from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import Executor

CHUNK = 1 << 20

_local = threading.local()


def _buffer() -> memoryview:
    view = getattr(_local, "view", None)
    if view is None:
        view = _local.view = memoryview(bytearray(CHUNK))
    return view


def update_from_fd(
    h: hashlib._Hash,
    fd: int,
    offset: int,
    length: int,
    *,
    also: hashlib._Hash | None = None,
    beside: Executor | None = None,
) -> int:
    """Feed `length` bytes of `fd` from `offset` into `h` (and into `also`, from the same reads:
    on the `beside` thread while this one hashes, if given); returns how many were there (fewer
    means the file is shorter than the caller expected)."""
    view = _buffer()
    done = 0
    while done < length:
        n = os.preadv(fd, [view[: min(CHUNK, length - done)]], offset + done)
        if n == 0:
            break
        piece = view[:n]
        if also is not None and beside is not None:
            other = beside.submit(also.update, piece)
            h.update(piece)
            other.result()  # the buffer is read again only after both hashes are done with it
        else:
            h.update(piece)
            if also is not None:
                also.update(piece)
        done += n
    return done


def sha256_file(path: str | os.PathLike[str]) -> tuple[str, int]:
    """(hex digest, size) of a whole file, streamed."""
    view = _buffer()
    h = hashlib.sha256()
    n = 0
    with open(path, "rb", buffering=0) as f:
        while size := f.readinto(view):
            h.update(view[:size])
            n += size
    return h.hexdigest(), n
