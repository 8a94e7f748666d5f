"""The one reachability walk over manifests: from roots, through index (manifest list) children
in the same repository, to every image's config and layers (docs/design.md §4).

Who walks decides how a manifest is loaded and what a missing or broken one means: GC aborts
with nothing deleted, verify records a problem and goes on, the archive-sync skip answers "copy
it for real", the manifest copier fetches over HTTP. The walk only orders and de-duplicates, so
every caller agrees on what "reachable" is.

Digests are hex strings here, not Digest objects: GC walks ~100k manifests and blobs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from layover.manifest import Manifest, ManifestKind


@dataclass(frozen=True)
class Refs:
    """What one manifest points at."""

    children: tuple[str, ...] = ()  # child manifests (indexes only), stored in the same repo
    blobs: tuple[str, ...] = ()  # config + non-foreign layers: each must be linked and stored
    foreign: tuple[str, ...] = ()  # foreign layers: their data may legitimately live elsewhere

    @classmethod
    def of(cls, m: Manifest) -> Refs:
        if m.kind is ManifestKind.INDEX:
            return cls(children=tuple(c.hex for c in m.children))
        return cls(blobs=tuple(d.hex for d in m.blobs), foreign=tuple(d.hex for d in m.foreign_layers))


@dataclass
class Reach:
    """Everything the roots reach, in an order a registry accepts them."""

    manifests: list[str] = field(default_factory=list)  # post-order: children before their index
    blobs: dict[str, str] = field(default_factory=dict)  # needed blob -> label of its first naming manifest
    foreign: set[str] = field(default_factory=set)


# (manifest hex, label of what names it) -> its refs, or None: it is missing or broken, the
# loader has dealt with that (raised, or recorded a problem), and the walk does not go below it.
Loader = Callable[[str, str], "Refs | None"]


def child_label(parent_hex: str, parent_label: str) -> str:
    """How a child manifest is named in messages: the path from the listed image to it."""
    return f"{parent_label} -> sha256:{parent_hex[:12]}"


def walk(
    roots: Iterable[tuple[str, str]],
    load: Loader,
    *,
    seen: set[str] | None = None,
    label_child: Callable[[str, str], str] = child_label,
) -> Reach:
    """Walk from `roots` ((hex, label) pairs). `seen` (manifest hexes already walked) lets a
    caller share de-duplication across calls, e.g. every listed image of one repository."""
    seen = set() if seen is None else seen
    reach = Reach()
    # (hex, label, refs): refs is None until the manifest is loaded; a loaded one is emitted
    # when popped the second time, after all its children: post-order without recursion.
    stack: list[tuple[str, str, Refs | None]] = [(h, lab, None) for h, lab in reversed(list(roots))]
    while stack:
        hex_, label, refs = stack.pop()
        if refs is not None:
            reach.manifests.append(hex_)
            continue
        if hex_ in seen:
            continue
        seen.add(hex_)
        loaded = load(hex_, label)
        if loaded is None:
            continue
        for b in loaded.blobs:
            reach.blobs.setdefault(b, label)
        reach.foreign.update(loaded.foreign)
        stack.append((hex_, label, loaded))
        below = label_child(hex_, label)
        stack.extend((c, below, None) for c in reversed(loaded.children))
    return reach
