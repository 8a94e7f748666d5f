"""Image references and digests, parsed once into frozen values.

The grammar is Distribution's (github.com/distribution/reference):

    reference  := name [ ":" tag ] [ "@" digest ]
    name       := [ domain "/" ] path-component [ "/" path-component ]*
    path-comp  := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
    tag        := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
    digest     := "sha256:" 64 lower-case hex

As in Docker, the first component is a registry host only if it contains "." or ":" or is
"localhost". The host says where an image is read from (layover/sources.py); the package serves
it without the host, under its repository path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from layover.errors import ReferenceError_

_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::[0-9]{{1,5}})?"
)
# A sha256 digest's hex form; storage directory names are exactly this.
HEX64 = re.compile(r"[0-9a-f]{64}")
_NAME_MAX = 255


@dataclass(frozen=True, order=True)
class Digest:
    """A sha256 content digest. Compared in full, never by prefix."""

    hex: str

    @classmethod
    def parse(cls, text: str) -> Digest:
        algorithm, sep, hex_ = text.partition(":")
        if not sep or algorithm != "sha256":
            raise ReferenceError_(text, "digest must be sha256:<64 hex>")
        if not HEX64.fullmatch(hex_):
            raise ReferenceError_(text, "digest must be sha256: followed by 64 lower-case hex digits")
        return cls(hex_)

    @classmethod
    def is_valid(cls, text: str) -> bool:
        """Whether `text` is exactly "sha256:<64 lower-case hex>"."""
        return text.startswith("sha256:") and HEX64.fullmatch(text[7:]) is not None

    def __str__(self) -> str:
        return f"sha256:{self.hex}"


@dataclass(frozen=True, order=True)
class ImageRef:
    """One image to copy: repository path plus a tag, a digest, or both.

    `registry` records the host the list named, if any: the image is read from there (or from
    where --registry-map redirects it); otherwise from --source.
    """

    repository: str
    tag: str | None = None
    digest: Digest | None = None
    registry: str | None = None

    @classmethod
    def parse(cls, text: str) -> ImageRef:
        if not text:
            raise ReferenceError_(text, "empty reference")
        if text != text.strip() or any(c.isspace() for c in text):
            raise ReferenceError_(text, "whitespace inside a reference")
        if not text.isascii() or not text.isprintable():
            raise ReferenceError_(text, "only printable ASCII is allowed")
        rest, at, digest_text = text.partition("@")
        digest = Digest.parse(digest_text) if at else None
        # A ":" after the last "/" separates the tag; one before it belongs to a host:port.
        slash = rest.rfind("/")
        colon = rest.rfind(":")
        tag: str | None = None
        if colon > slash:
            rest, tag = rest[:colon], rest[colon + 1 :]
            if not _TAG.fullmatch(tag):
                raise ReferenceError_(
                    text, "tag must be 1-128 of [A-Za-z0-9_.-] and not start with '.' or '-'"
                )
        registry: str | None = None
        first, sep, remainder = rest.partition("/")
        if sep and ("." in first or ":" in first or first == "localhost"):
            if not _DOMAIN.fullmatch(first):
                raise ReferenceError_(text, f"invalid registry host {first!r}")
            registry, rest = first, remainder
        if not rest:
            raise ReferenceError_(text, "missing repository name")
        if len(rest) > _NAME_MAX:
            raise ReferenceError_(text, f"repository name longer than {_NAME_MAX} characters")
        for component in rest.split("/"):
            if not _PATH_COMPONENT.fullmatch(component):
                if component.lower() != component:
                    why = "repository name must be lower-case"
                elif component in ("", ".", ".."):
                    why = "empty, '.' or '..' path component"
                else:
                    why = f"invalid path component {component!r}"
                raise ReferenceError_(text, why)
        if tag is None and digest is None:
            raise ReferenceError_(text, "needs a tag (name:tag) or a digest (name@sha256:...)")
        return cls(rest, tag, digest, registry)

    @property
    def key(self) -> tuple[str, str | None, Digest | None]:
        """Identity once the host is replaced by the source registry."""
        return (self.repository, self.tag, self.digest)

    def at(self, host: str) -> str:
        """The reference on another registry, e.g. for `docker://` transports."""
        return f"{host}/{self.source_suffix}"

    @property
    def reference(self) -> Digest | str:
        """What a registry's manifests endpoint is asked for: the digest when pinned, else the tag."""
        if self.digest is not None:
            return self.digest
        assert self.tag is not None  # parse() refuses a reference with neither
        return self.tag

    @property
    def source_suffix(self) -> str:
        """What to read: by digest when pinned (exact bytes, and skopeo refuses tag+digest)."""
        if self.digest is not None:
            return f"{self.repository}@{self.digest}"
        return f"{self.repository}:{self.tag}"

    @property
    def destination_suffix(self) -> str:
        """What to write: by tag when there is one (skopeo cannot write tag+digest), else digest."""
        if self.tag is not None:
            return f"{self.repository}:{self.tag}"
        return f"{self.repository}@{self.digest}"

    def __str__(self) -> str:
        s = self.repository
        if self.tag is not None:
            s += f":{self.tag}"
        if self.digest is not None:
            s += f"@{self.digest}"
        return s
