"""What a release run did, per stage: typed values plus their text and markdown renderings."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace

from layover.attached import AttachedRow
from layover.contents import Contents
from layover.units import human_bytes


@dataclass(frozen=True)
class ImageCopy:
    """One image copied by skopeo: which blobs moved and which were already there."""

    image: str
    manifest_digest: str | None
    blobs_copied: int
    blobs_reused: int
    bytes_copied: int
    seconds: float
    attempts: int = 1
    # (digest hex, size) of every blob this copy uploaded: two images copied at the same time
    # may both upload a new blob they share, and the stage counts it once.
    copied: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class StageReport:
    name: str
    seconds: float
    images: int = 0
    blobs_copied: int = 0
    blobs_reused: int = 0
    bytes_moved: int = 0
    detail: str = ""
    # per image, for the JSON report (what each image's copy moved, in how many attempts); the
    # text and markdown tables show the stage's totals only
    copies: tuple[ImageCopy, ...] = ()

    @classmethod
    def from_copies(cls, name: str, seconds: float, copies: list[ImageCopy]) -> StageReport:
        distinct = {hex_: size for c in copies for hex_, size in c.copied}
        return cls(
            name=name,
            seconds=seconds,
            images=len(copies),
            blobs_copied=len(distinct) + sum(c.blobs_copied for c in copies if not c.copied),
            blobs_reused=sum(c.blobs_reused for c in copies),
            bytes_moved=sum(distinct.values()) + sum(c.bytes_copied for c in copies if not c.copied),
            detail=_copy_detail(copies),
            copies=tuple(replace(c, copied=()) for c in copies),  # the blob list stays out: it can be long
        )


def _copy_detail(copies: list[ImageCopy]) -> str:
    """Where a sync stage's time went: skipped images, time inside copies, retries."""
    skipped = sum(1 for c in copies if c.blobs_copied == 0 and c.bytes_copied == 0)
    parts = [f"{sum(c.seconds for c in copies):.2f} s in copies"]
    if skipped:
        parts.append(f"{skipped} image(s) moved no blob")
    retried = sum(c.attempts - 1 for c in copies)
    if retried:
        parts.append(f"{retried} retried attempt(s)")
    return ", ".join(parts)


@dataclass(frozen=True)
class ReleaseReport:
    """What one run made, or how far it got. A failed run's report has `status` "failed" or
    "interrupted", no tarball, the stages it finished, and the stage it stopped in."""

    list_source: str
    list_commit: str | None
    images: int
    output: str
    sha256: str
    tarball_bytes: int
    stages: tuple[StageReport, ...] = field(default_factory=tuple)
    contents: Contents | None = None  # what the package holds (layover/contents.py)
    attached: tuple[AttachedRow, ...] = ()  # per listed image, when attachments were looked up

    status: str = "succeeded"  # "succeeded", "failed" or "interrupted"
    source: str = ""  # the source registry, and every FROM=TO redirect
    layover_version: str = ""
    started: str = ""  # ISO 8601, UTC
    finished: str = ""
    wall_seconds: float | None = None  # start to end of the run, as a watch measures it
    failed_stage: str | None = None
    error: str | None = None  # one line
    failures: tuple[str, ...] = ()  # one line per failed image, when a stage named them

    @property
    def seconds(self) -> float:
        """Wall time when known (it includes what no stage counts: start-up, teardown)."""
        return self.wall_seconds if self.wall_seconds is not None else sum(s.seconds for s in self.stages)

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"

    def _rows(self) -> list[tuple[str, ...]]:
        rows: list[tuple[str, ...]] = []
        for s in self.stages:
            rows.append(
                (
                    s.name,
                    f"{s.seconds:.2f}",
                    str(s.images) if s.images else "",
                    str(s.blobs_copied) if s.images else "",
                    str(s.blobs_reused) if s.images else "",
                    human_bytes(s.bytes_moved) if s.bytes_moved else "",
                    s.detail,
                )
            )
        return rows

    _HEAD = ("stage", "seconds", "images", "blobs copied", "blobs reused", "bytes moved", "detail")

    def header_lines(self) -> list[str]:
        src = self.list_source + (f" @ {self.list_commit}" if self.list_commit else "")
        lines = [f"images.list: {src}"]
        if self.source:
            lines.append(f"source: {self.source}")
        lines.append(f"images: {self.images}")
        if self.ok:
            lines += [f"tarball: {self.output} ({human_bytes(self.tarball_bytes)})", f"sha256: {self.sha256}"]
        else:
            lines += [
                f"status: {self.status} in {self.failed_stage or 'preparation'}, no tarball written "
                f"({self.output})",
                f"error: {self.error}",
            ]
            lines += [f"  {f}" for f in self.failures]
        lines.append(f"total: {self.seconds:.2f} s")
        return lines

    def to_text(self) -> str:
        rows = [self._HEAD, *self._rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(self._HEAD))]
        table = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        return "\n".join([*self.header_lines(), "", *table, *self._attached_text()])

    def to_json(self) -> str:
        """Sidecar metadata: which list (and commit) made this tarball, how, and what it holds."""
        doc = asdict(replace(self, contents=None))
        doc["contents"] = self.contents.to_obj() if self.contents is not None else None
        return json.dumps(doc, indent=2, sort_keys=True) + "\n"

    def to_markdown(self) -> str:
        title = "Layover release report" if self.ok else f"Layover release {self.status}"
        lines = [f"# {title}", ""]
        lines += [f"- {h}" for h in self.header_lines()]
        lines += ["", "| " + " | ".join(self._HEAD) + " |", "|" + "---|" * len(self._HEAD)]
        lines += ["| " + " | ".join(r) + " |" for r in self._rows()]
        if any(a.counts.total for a in self.attached):
            head = ("image", *self._ATTACHED_HEAD)
            lines += ["", "## Attached artifacts", ""]
            lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(r) + " |" for r in self._attached_rows()]
        return "\n".join(lines) + "\n"

    # --- attached artifacts (layover/attached.py) --------------------------------------------
    _ATTACHED_HEAD = ("signatures", "attestations", "SBOMs", "other")

    def _attached_rows(self) -> list[tuple[str, ...]]:
        return [
            (a.image, *(str(n) for n in (c.signatures, c.attestations, c.sboms, c.other)))
            for a in self.attached
            for c in (a.counts,)
        ]

    def _attached_text(self) -> list[str]:
        """Counts per listed image, only when something is attached to any of them."""
        if not any(a.counts.total for a in self.attached):
            return []
        rows = [("attached to", *self._ATTACHED_HEAD), *self._attached_rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return ["", *("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)]

    @property
    def sidecar(self) -> str:
        """Where the report is written: FILE.json beside a tarball, FILE.failed.json for a run
        that made none (so FILE.json always describes the FILE that is there)."""
        return self.output + (".json" if self.ok else ".failed.json")
