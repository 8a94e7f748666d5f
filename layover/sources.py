"""Which registry each listed image is copied from, and where it lands in the package.

    source of an image   its reference's own host when the list names one, else --source;
                         then --registry-map FROM=TO redirects FROM to TO (an internal mirror)
    path in the package  the reference without its host: `ci.example.com/team/app:1` is served
                         by the customer's registry as `team/app:1`

So two images from two different source registries may not share a repository path: the
package would mix two registries' histories under one name. That is an input error, found with
every line it concerns before anything is copied.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from layover.errors import ImageListError, UsageError
from layover.imagelist import ImageList
from layover.reference import ImageRef

_HOSTPORT = re.compile(r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$|^\[[0-9a-fA-F:.]+\](:[0-9]{1,5})?$")


def check_host(text: str, what: str) -> str:
    """`text` if it is HOST[:PORT], else a UsageError naming `what` (a flag or parameter)."""
    if "://" in text:
        raise UsageError(f"{what} {text!r}: give HOST[:PORT] without a scheme, e.g. registry.ci:5000")
    if not _HOSTPORT.fullmatch(text):
        raise UsageError(f"{what} {text!r} is not HOST[:PORT], e.g. registry.ci:5000 or 127.0.0.1:5000")
    return text


def parse_redirect(text: str, what: str) -> tuple[str, str]:
    """FROM=TO, both HOST[:PORT]."""
    src, sep, dst = text.partition("=")
    if not sep:
        raise UsageError(f"{what} {text!r}: give FROM=TO, e.g. registry.example.com=mirror.internal:5000")
    return check_host(src.strip(), what), check_host(dst.strip(), what)


@dataclass(frozen=True)
class SourceMap:
    """The default source and the redirects: which host each reference is read from."""

    default: str
    redirects: tuple[tuple[str, str], ...] = ()

    @property
    def _map(self) -> Mapping[str, str]:
        return dict(self.redirects)

    def host_for(self, ref: ImageRef) -> str:
        host = ref.registry or self.default
        return self._map.get(host, host)

    def hosts(self, refs: Iterable[ImageRef]) -> dict[str, int]:
        """Every source host the refs are read from, with how many images each."""
        out: dict[str, int] = {}
        for ref in refs:
            host = self.host_for(ref)
            out[host] = out.get(host, 0) + 1
        return out


def check_one_source_per_repository(images: ImageList, sources: SourceMap) -> None:
    """Raise an ImageListError naming every line whose repository another source also fills."""
    first: dict[str, tuple[str, int]] = {}  # repository -> (host, line)
    problems: list[tuple[int, str, str]] = []
    lines = [(e.line, e.ref) for e in images.entries]
    for dup in images.duplicates:
        lines += [(n, r) for n, r in zip(dup.lines[1:], dup.refs[1:], strict=False)]
    for line, ref in sorted(lines, key=lambda x: x[0]):
        host = sources.host_for(ref)
        seen = first.setdefault(ref.repository, (host, line))
        if seen[0] != host:
            problems.append(
                (
                    line,
                    str(_with_host(ref)),
                    f"{ref.repository} comes from {host} here but from {seen[0]} on line "
                    f"{seen[1]}: one repository path in the package can hold images of one "
                    "source registry only; rename one, or map one host to the other "
                    "(--registry-map FROM=TO)",
                )
            )
    if problems:
        raise ImageListError(images.source, problems)


def _with_host(ref: ImageRef) -> str:
    return f"{ref.registry}/{ref}" if ref.registry else str(ref)
