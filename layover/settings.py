"""Typed settings: what one release run needs. Pydantic so the Prefect UI renders a form, and
pydantic-settings for the CLI's LAYOVER_* environment variables.

Nothing here reads the environment at import time.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from layover.errors import UsageError
from layover.sources import SourceMap

_HOSTPORT = r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$|^\[[0-9a-fA-F:.]+\](:[0-9]{1,5})?$"


class ListFromFile(BaseModel):
    """The images.list is a file on the build host."""

    model_config = ConfigDict(frozen=True, extra="forbid", title="images.list file")
    kind: Literal["file"] = "file"
    path: str = Field(description="Path of the images.list on the build host.", min_length=1)


class ListFromGit(BaseModel):
    """The images.list lives in a git repository; it is read at the exact commit `ref` names."""

    model_config = ConfigDict(frozen=True, extra="forbid", title="images.list in git")
    kind: Literal["git"] = "git"
    repo: str = Field(description="Git repository URL or path on the build host.", min_length=1)
    ref: str = Field(description="Branch, tag or commit to read the list at.", min_length=1)
    path: str = Field(default="images.list", description="Path of the list inside the repository.")


# A plain union, not a discriminated one: Prefect's UI draws `anyOf` as a choice between two
# forms of plain fields, but `oneOf` + discriminator (pydantic's output with Field(discriminator))
# as a raw JSON editor. `kind` still tells them apart: each model accepts only its own literal.
ListLocation = ListFromFile | ListFromGit


def default_concurrency() -> int:
    """Twice the CPUs, 2 to 8. A copy is CPU-bound on the build host (skopeo and the archive
    registry both hash every byte), so more copies than that only contend. Measured on 2 CPUs,
    cold bench release (1.8 GB): 8 copies 19.0-19.2 s, 4 copies 17.1-17.8 s."""
    return min(8, max(2, 2 * (os.cpu_count() or 1)))


class ReleaseRequest(BaseModel):
    """One release build: which images, from where, into which tarball."""

    model_config = ConfigDict(frozen=True, extra="forbid", title="Release")

    images: ListLocation = Field(description="Where the release's images.list comes from.")
    source: str = Field(
        description="Registry to copy from, HOST[:PORT] (no scheme): for every reference in the list "
        "that names no registry host of its own.",
        examples=["127.0.0.1:5000"],
    )
    registry_map: tuple[str, ...] = Field(
        default=(),
        description="Redirects, FROM=TO (both HOST[:PORT]): images whose source is FROM are read "
        "from TO, e.g. an internal mirror.",
        examples=[["registry.example.com=mirror.internal:5000"]],
    )
    work_dir: Path = Field(
        description="Build host directory holding the archive (lower), overlay dirs and lock. "
        "Keep it and the output on one filesystem.",
    )
    output: Path = Field(description="Release tarball to write; a .sha256 is written beside it.")
    concurrency: int = Field(
        default_factory=default_concurrency,
        ge=1,
        le=64,
        description="Parallel image copies per stage (default: twice the build host's CPUs, 2 to 8).",
    )
    src_tls_verify: bool = Field(default=True, description="Verify the source registry's TLS certificate.")
    src_authfile: Path | None = Field(
        default=None,
        description="containers-auth.json with credentials for the source registry (path only; "
        "the file's contents never enter logs or parameters).",
    )
    src_cert_dir: Path | None = Field(
        default=None,
        description="Directory with the source registry's CA certificate(s) as *.crt (and a client "
        "*.cert/*.key pair if it wants one), for a private CA.",
    )
    src_credentials_block: str | None = Field(
        default=None,
        description="Name of a Prefect Secret block holding a containers-auth.json document.",
    )

    lock_wait_seconds: float = Field(
        default=0,
        ge=0,
        le=86400,
        description="If another run holds the work dir, wait this long for it before failing.",
    )
    copy_timeout_seconds: float = Field(
        default=900,
        gt=0,
        le=86400,
        description="Give up one attempt of one image copy after this long (a stalled registry).",
    )
    copy_retries: int = Field(
        default=3,
        ge=0,
        le=10,
        description="Retries per image copy on transient registry errors; in archive sync only "
        "attempts that landed no blob spend one (docs/reliability.md).",
    )
    copier: Literal["native", "skopeo"] = Field(
        default="native",
        description="Archive sync's copier: native (in process; skopeo only for schema 1 images) "
        "or skopeo (one skopeo process per image).",
    )
    package_sync: Literal["files", "registry"] = Field(
        default="files",
        description="Package sync: files (link the manifests in the package's storage from the "
        "archive's records) or registry (PUT them through a package registry); same tarball.",
    )
    source_down_seconds: float = Field(
        default=60,
        gt=0,
        le=86400,
        description="Stop archive sync when no request to the source has succeeded for this long "
        "(exit 4): a source that is down, not flaky.",
    )
    stage_deadline_seconds: float = Field(
        default=7200,
        gt=0,
        le=7 * 86400,
        description="Give up archive sync's remaining retries after this long.",
    )
    attached: Literal["copy", "require", "none"] = Field(
        default="copy",
        description="Signatures, attestations, SBOMs and other referrers of the listed images: copy "
        "whatever is attached, require a signature on every listed image (else fail naming them), "
        "or ship none (docs/attached.md).",
    )
    delta_from: tuple[Annotated[str, Field(min_length=1)], ...] = Field(
        default=(),
        max_length=8,
        description="Also write a delta package against each base: a package (tarball or its .json) on the "
        "build host, or a git tag of the list's repository whose package this work dir built. Each is "
        "written beside the output as <output>.from-<base>.tar (docs/customer.md).",
    )

    @model_validator(mode="after")
    def _one_credential_source(self) -> ReleaseRequest:
        if self.src_authfile is not None and self.src_credentials_block is not None:
            raise ValueError("give src_authfile or src_credentials_block, not both")
        return self

    @field_validator("source")
    @classmethod
    def _host_port(cls, v: str) -> str:
        if "://" in v:
            raise ValueError(f"{v!r}: give HOST[:PORT] without a scheme, e.g. registry.ci:5000")
        if not re.fullmatch(_HOSTPORT, v):
            raise ValueError(f"{v!r} is not HOST[:PORT], e.g. registry.ci:5000 or 127.0.0.1:5000")
        return v

    @field_validator("registry_map")
    @classmethod
    def _redirects(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for item in v:
            src, sep, dst = item.partition("=")
            if not sep or not all(re.fullmatch(_HOSTPORT, h.strip()) for h in (src, dst)):
                raise ValueError(
                    f"{item!r} is not FROM=TO with two HOST[:PORT], "
                    "e.g. registry.example.com=mirror.internal:5000"
                )
        return tuple(item.replace(" ", "") for item in v)

    @property
    def sources(self) -> SourceMap:
        """Which registry each listed image is read from (layover/sources.py)."""
        pairs = tuple(tuple(item.split("=", 1)) for item in self.registry_map)
        return SourceMap(self.source, pairs)  # type: ignore[arg-type]  # split gives two

    @property
    def run_name(self) -> str:
        """What a flow run of this request is called: the list (file, or ref:path in git) and
        where its images come from."""
        where = (
            self.images.path
            if isinstance(self.images, ListFromFile)
            else f"{self.images.ref}:{self.images.path}"
        )
        return f"{Path(where).name if isinstance(self.images, ListFromFile) else where} from {self.source}"

    @property
    def list_field(self) -> str:
        """The field naming the list's location, for messages."""
        return "images.repo" if isinstance(self.images, ListFromGit) else "images"


class RunSettings(BaseSettings):
    """`layover run`'s settings: each flag, else its LAYOVER_* environment variable (the flag's
    name in upper case, e.g. LAYOVER_WORK_DIR), else the default. Read when built, never at
    import; `request()` turns them into the flow's one parameter."""

    model_config = SettingsConfigDict(env_prefix="LAYOVER_", extra="ignore", frozen=True)

    images: Path | None = None
    images_git: str | None = None
    images_ref: str | None = None
    images_path: str = "images.list"
    source: str | None = None
    registry_map: Annotated[tuple[str, ...], NoDecode] = ()
    work_dir: Path | None = None
    output: Path | None = None
    concurrency: int | None = None
    src_tls_verify: bool = True
    src_authfile: Path | None = None
    src_cert_dir: Path | None = None
    src_credentials_block: str | None = None
    lock_wait: float = 0
    copy_timeout: float = 900
    copy_retries: int = 3
    heartbeat_seconds: int = 0
    copier: str = "native"
    package_sync: str = "files"
    source_down_seconds: float = 60
    stage_deadline_seconds: float = 7200
    attached: str = "copy"
    delta_from: Annotated[tuple[str, ...], NoDecode] = ()

    @field_validator("registry_map", "delta_from", mode="before")
    @classmethod
    def _split(cls, v: object) -> object:
        # LAYOVER_REGISTRY_MAP="a.example=m:5000,b.example=m:5001"
        return tuple(p for p in re.split(r"[\s,]+", v) if p) if isinstance(v, str) else v

    def request(self) -> ReleaseRequest:
        """The flow parameter; a missing or contradictory setting is a UsageError naming flags."""
        images: ListFromFile | ListFromGit
        if self.images_git is not None:
            if self.images is not None:
                raise UsageError("give --images FILE or --images-git REPO (with --images-ref), not both")
            if not self.images_ref:
                raise UsageError("--images-git needs --images-ref (a branch, tag or commit)")
            images = ListFromGit(repo=self.images_git, ref=self.images_ref, path=self.images_path)
        elif self.images is not None:
            images = ListFromFile(path=str(self.images))
        else:
            raise UsageError(
                "give the list: --images FILE, or --images-git REPO --images-ref REF (or LAYOVER_IMAGES)"
            )
        missing = [
            f"--{f.replace('_', '-')} (or LAYOVER_{f.upper()})"
            for f in ("source", "work_dir", "output")
            if getattr(self, f) is None
        ]
        if missing:
            raise UsageError(f"missing {', '.join(missing)}")
        fields: dict[str, Any] = {
            "images": images,
            "source": self.source,
            "registry_map": self.registry_map,
            "work_dir": self.work_dir,
            "output": self.output,
            "src_tls_verify": self.src_tls_verify,
            "src_authfile": self.src_authfile,
            "src_cert_dir": self.src_cert_dir,
            "src_credentials_block": self.src_credentials_block,
            "lock_wait_seconds": self.lock_wait,
            "copy_timeout_seconds": self.copy_timeout,
            "copy_retries": self.copy_retries,
            "copier": self.copier,
            "package_sync": self.package_sync,
            "source_down_seconds": self.source_down_seconds,
            "stage_deadline_seconds": self.stage_deadline_seconds,
            "attached": self.attached,
            "delta_from": self.delta_from,
        }
        if self.concurrency is not None:
            fields["concurrency"] = self.concurrency
        try:
            return ReleaseRequest(**fields)
        except ValidationError as e:
            raise UsageError("; ".join(_say(err) for err in e.errors())) from None


def _say(err: ErrorDetails) -> str:
    """One pydantic error, naming the flag (layover/naming.py)."""
    from layover.naming import FLAGS

    field = ".".join(str(p) for p in err["loc"] if not isinstance(p, int))
    flag = FLAGS.get(field, FLAGS.get(field.split(".")[0], field))
    return f"{flag}: {err['msg'].removeprefix('Value error, ')}"


class KeepRecent(BaseModel):
    """Keep the images.list at each of the last N git tags (or branches) whose name matches."""

    model_config = ConfigDict(frozen=True, extra="forbid", title="Recent releases in git")
    repo: str = Field(description="Git repository URL or path on the build host.", min_length=1)
    pattern: str = Field(
        default="*", min_length=1, description="Glob on tag and branch names, e.g. v* or release-*."
    )
    last: int = Field(
        ge=1,
        le=1000,
        description="How many of the matching tags or branches to keep, "
        "the last in version order (v1.10 after v1.9).",
    )
    path: str = Field(default="images.list", description="Path of the list inside the repository.")


class RetentionRequest(BaseModel):
    """One archive prune: keep what the named releases need, delete everything else from lower/."""

    model_config = ConfigDict(frozen=True, extra="forbid", title="Archive retention")

    work_dir: Path = Field(description="Build host directory holding the archive (lower) and the lock.")
    keep_lists: tuple[ListLocation, ...] = Field(
        default=(), description="images.lists whose images are kept (files, or a git ref each)."
    )
    keep_recent: KeepRecent | None = Field(
        default=None, description="Also keep the lists of the last N matching git tags or branches."
    )
    dry_run: bool = Field(default=True, description="Only report what would be deleted; change nothing.")
    force: bool = Field(
        default=False,
        description="Prune even if the lists name no image, or name images the archive does not hold.",
    )
    lock_wait_seconds: float = Field(
        default=3600,
        ge=0,
        le=86400,
        description="If a release holds the work dir, wait this long for it before failing.",
    )
