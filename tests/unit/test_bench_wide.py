"""The wide bench fixture has the shape issue 15 describes, and the same digests on every build."""

from __future__ import annotations

import pytest

from bench import wide

pytestmark = pytest.mark.slow  # builds 674 images' layers (random bytes, gzip)


def test_shape_of_the_releases(tmp_path):
    fx = wide.build(600, tmp_path / "cache")
    r1 = {i.repository: i for i in fx.release1}
    r2 = {i.repository: i for i in fx.release2}
    assert len(r1) == 600 and len(fx.release1) == 600
    assert len(set(r1) - set(r2)) == 12  # dropped
    assert len(set(r2) - set(r1)) == 14  # new
    changed = [r for r in set(r1) & set(r2) if r1[r].manifest.digest != r2[r].manifest.digest]
    assert len(changed) == 60 and all(r2[r].tag != r1[r].tag for r in changed)
    assert sum(1 for i in fx.release1 if len(i.children) == 2) == 30  # every 20th: a 2-platform index
    bases = {b.digest for i in fx.release1 for b in i.blobs if b.size >= 1_000_000}
    assert len(bases) == 12
    assert all(
        40_000 <= b.size <= 410_000
        for i in fx.release1
        for b in i.blobs
        if b.digest not in bases and b.size > 2000
    )  # app layers (configs are the small ones)


def test_the_same_digests_on_every_build(tmp_path):
    one = wide.build(60, tmp_path / "a")
    two = wide.build(60, tmp_path / "b")
    assert [i.manifest.digest for i in one.release2] == [i.manifest.digest for i in two.release2]
    assert one.key == "wide60-v1"
