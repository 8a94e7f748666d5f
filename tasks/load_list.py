"""Stage 0: read and validate the images.list, every bad line reported before any copy."""

from __future__ import annotations

from dataclasses import dataclass

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from layover import imagelist
from layover.adapters.git import read_list_at
from layover.imagelist import ImageList
from layover.settings import ListFromFile, ListFromGit


@dataclass(frozen=True)
class LoadedList:
    images: ImageList
    source: str  # the file, or repo:path@ref, for the report
    commit: str | None  # the exact git commit the list was read at


@task(name="load-images-list", cache_policy=NO_CACHE)
def load_images(location: ListFromFile | ListFromGit) -> LoadedList:
    if isinstance(location, ListFromGit):
        got = read_list_at(location.repo, location.ref, location.path)
        source = f"{got.repo}:{got.path}@{got.ref}"
        loaded = LoadedList(imagelist.parse_bytes(got.data, source), source, got.commit)
    else:
        loaded = LoadedList(imagelist.load(location.path), location.path, None)
    logger = get_run_logger()
    for dup in loaded.images.duplicates:
        logger.warning(
            "%s: %s is listed on lines %s; copying it once",
            loaded.source,
            dup.ref,
            ", ".join(map(str, dup.lines)),
        )
    logger.info("%s: %d images", loaded.source, len(loaded.images))
    return loaded
