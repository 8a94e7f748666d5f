"""images.list: one image reference per line.

`#` starts a comment (whole line or after the reference), blank lines are ignored, CRLF is
tolerated. Every bad line is collected and reported together, with its number, before
anything is copied. A reference listed twice is kept once and reported once as a duplicate;
one tag listed with two different digests is an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from layover.errors import ImageListError, ReferenceError_
from layover.reference import ImageRef

MAX_LINE = 4096  # far beyond any valid reference (255 name + 128 tag + 71 digest + host)


@dataclass(frozen=True)
class Entry:
    ref: ImageRef
    line: int


@dataclass(frozen=True)
class Duplicate:
    ref: ImageRef
    lines: tuple[int, ...]
    refs: tuple[ImageRef, ...] = ()  # as written on each of `lines` (hosts may differ)


@dataclass(frozen=True)
class ImageList:
    source: str  # file name (or description) for messages
    entries: tuple[Entry, ...]
    duplicates: tuple[Duplicate, ...] = ()

    @property
    def refs(self) -> tuple[ImageRef, ...]:
        return tuple(e.ref for e in self.entries)

    def __len__(self) -> int:
        return len(self.entries)


def parse_text(text: str, source: str = "<images.list>") -> ImageList:
    problems: list[tuple[int, str, str]] = []
    first_line: dict[tuple, int] = {}
    first_ref: dict[tuple, ImageRef] = {}
    tag_digest: dict[tuple[str, str], tuple[int, ImageRef]] = {}
    dup_lines: dict[tuple, list[int]] = {}
    dup_refs: dict[tuple, list[ImageRef]] = {}
    entries: list[Entry] = []
    if text.startswith("\ufeff"):  # a BOM from Windows editors is not part of line 1
        text = text[1:]
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.removesuffix("\r")
        content = line.split("#", 1)[0].strip()
        if not content:
            continue
        if len(line) > MAX_LINE:
            problems.append((number, line[:80] + "...", f"line longer than {MAX_LINE} characters"))
            continue
        try:
            ref = ImageRef.parse(content)
        except ReferenceError_ as e:
            problems.append((number, line, e.reason))
            continue
        if ref.key in first_line:
            dup_lines.setdefault(ref.key, [first_line[ref.key]]).append(number)
            dup_refs.setdefault(ref.key, [first_ref[ref.key]]).append(ref)
            continue
        if ref.tag is not None:
            pin = (ref.repository, ref.tag)
            seen = tag_digest.get(pin)
            if seen is not None and seen[1].digest != ref.digest:
                problems.append(
                    (
                        number,
                        line,
                        f"{ref.repository}:{ref.tag} is already listed on line {seen[0]} "
                        "with a different digest; keep one",
                    )
                )
                continue
            tag_digest.setdefault(pin, (number, ref))
        first_line[ref.key] = number
        first_ref[ref.key] = ref
        entries.append(Entry(ref, number))
    if problems:
        raise ImageListError(source, problems)
    by_key = {e.ref.key: e.ref for e in entries}
    duplicates = tuple(Duplicate(by_key[k], tuple(v), tuple(dup_refs[k])) for k, v in dup_lines.items())
    return ImageList(source, tuple(entries), duplicates)


def parse_bytes(data: bytes, source: str = "<images.list>") -> ImageList:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ImageListError(
            source,
            [
                (
                    line,
                    data.split(b"\n")[line - 1][:80].decode("utf-8", "replace"),
                    f"not UTF-8 (byte {e.start}); save the file as UTF-8",
                )
            ],
        ) from None
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise ImageListError(source, [(line, "", "NUL byte; this is not a text file")])
    return parse_text(text, source)


def load(path: str | Path) -> ImageList:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ImageListError(str(p), [(0, "", f"cannot read the file: {e.strerror}")]) from None
    return parse_bytes(data, str(p))
