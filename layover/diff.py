"""What changes for a customer going from one package to another, from their contents alone.

Images are matched per repository: the same tag on both sides is the same image (changed if
its digest moved); when a repository then has exactly one image left on each side, the image
was re-tagged (changed, e.g. web:1.0 -> web:2.0); anything else left is added or removed.

"Bytes still needed" are the blobs of NEW (manifests included) that OLD does not hold: what a
customer who installed OLD must still receive, which is what a delta from OLD carries.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from layover.contents import Contents, Image
from layover.units import human_bytes


@dataclass(frozen=True)
class ImageChange:
    repository: str
    old: Image | None
    new: Image | None

    @property
    def kind(self) -> str:
        if self.old is None:
            return "added"
        if self.new is None:
            return "removed"
        return (
            "unchanged"
            if self.old.digest == self.new.digest and self.old.reference == self.new.reference
            else "changed"
        )

    def to_obj(self) -> dict[str, object]:
        return {
            "repository": self.repository,
            "change": self.kind,
            "old": {"reference": self.old.reference, "digest": self.old.digest} if self.old else None,
            "new": {"reference": self.new.reference, "digest": self.new.digest} if self.new else None,
        }


@dataclass(frozen=True)
class DiffReport:
    old: str  # the packages' release labels
    new: str
    changes: tuple[ImageChange, ...]  # every image of either side, by repository
    blobs_needed: int  # blobs of NEW that OLD does not hold
    bytes_needed: int
    new_blobs: int  # every blob of NEW
    new_bytes: int

    def of(self, kind: str) -> list[ImageChange]:
        return [c for c in self.changes if c.kind == kind]

    def to_text(self) -> str:
        lines = [f"old: {self.old}", f"new: {self.new}", ""]
        for kind, mark in (("added", "+"), ("removed", "-"), ("changed", "~")):
            for c in self.of(kind):
                if c.old and c.new:
                    moved = (
                        ""
                        if c.old.digest == c.new.digest
                        else f"  {_short(c.old.digest)} -> {_short(c.new.digest)}"
                    )
                    lines.append(f"{mark} {c.old.reference} -> {c.new.reference}{moved}")
                else:
                    img = c.new or c.old
                    assert img is not None
                    lines.append(f"{mark} {img.reference}  {_short(img.digest)}")
        counts = {k: len(self.of(k)) for k in ("added", "removed", "changed", "unchanged")}
        if any(counts[k] for k in ("added", "removed", "changed")):
            lines.append("")
        lines.append(", ".join(f"{n} {k}" for k, n in counts.items()))
        lines.append(
            f"a customer on old still needs {self.blobs_needed} of {self.new_blobs} blobs: "
            f"{human_bytes(self.bytes_needed)} of {human_bytes(self.new_bytes)}"
        )
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(
            {
                "old": self.old,
                "new": self.new,
                "images": [c.to_obj() for c in self.changes],
                "counts": {k: len(self.of(k)) for k in ("added", "removed", "changed", "unchanged")},
                "blobs_needed": self.blobs_needed,
                "bytes_needed": self.bytes_needed,
                "new_blobs": self.new_blobs,
                "new_bytes": self.new_bytes,
            },
            indent=2,
            sort_keys=True,
        )


def diff(old: Contents, new: Contents) -> DiffReport:
    changes: list[ImageChange] = []
    repos = sorted({i.repository for i in (*old.images, *new.images)})
    for repo in repos:
        before = [i for i in old.images if i.repository == repo]
        after = [i for i in new.images if i.repository == repo]
        for img in list(after):
            same = next((o for o in before if o.tag is not None and o.tag == img.tag), None) or next(
                (o for o in before if o.reference == img.reference), None
            )
            if same is not None:
                changes.append(ImageChange(repo, same, img))
                before.remove(same)
                after.remove(img)
        if len(before) == 1 and len(after) == 1:
            changes.append(ImageChange(repo, before.pop(), after.pop()))
        changes += [ImageChange(repo, o, None) for o in before]
        changes += [ImageChange(repo, None, n) for n in after]
    have = {b.digest for b in old.blobs}
    needed = [b for b in new.blobs if b.digest not in have]
    return DiffReport(
        old=old.release,
        new=new.release,
        changes=tuple(changes),
        blobs_needed=len(needed),
        bytes_needed=sum(b.size for b in needed),
        new_blobs=len(new.blobs),
        new_bytes=sum(b.size for b in new.blobs),
    )


def _short(digest: str) -> str:
    return digest[:19]
