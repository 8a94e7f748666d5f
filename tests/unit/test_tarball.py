"""The release tarball's layout: order, headers, 4 KiB data alignment, readable by tarfile."""

from __future__ import annotations

import hashlib
import io
import tarfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layover.errors import StorageError
from layover.tarball import (
    ALIGN,
    BLOCK,
    Entry,
    Kind,
    TarPlan,
    comment_record,
    data_regions,
    directories_of,
    ordered,
    pax_record,
    plan,
)


def _data_for(name: str, size: int) -> bytes:
    seed = hashlib.sha256(name.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def _render(tp: TarPlan) -> bytes:
    """What the writer produces, built in memory: headers, data, padding, trailer."""
    out = bytearray()
    for pm in tp.members:
        assert len(out) == pm.offset
        out += pm.header
        assert len(out) == pm.data_offset
        if pm.entry.kind is Kind.FILE:
            out += _data_for(pm.entry.name, pm.entry.size)
        out += bytes(pm.padding)
    assert len(out) == tp.trailer_offset
    out += tp.trailer
    assert len(out) == tp.size
    return bytes(out)


def _tree(files: dict[str, int]) -> list[Entry]:
    dirs = directories_of(list(files))
    return [Entry(d, Kind.DIR) for d in dirs] + [Entry(n, Kind.FILE, s) for n, s in files.items()]


def _read_back(blob: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:") as tf:
        members = {m.name: m for m in tf.getmembers()}
        for m in members.values():
            if m.isfile():
                data = tf.extractfile(m).read()  # type: ignore[union-attr]
                assert data == _data_for(m.name, m.size), m.name
    return members


def test_directories_come_right_before_their_contents_in_byte_order():
    entries = _tree({"a-c": 1, "a/b": 1, "B/x": 1, "a/Z": 1, "ab": 1})
    names = [e.name for e in ordered(entries)]
    assert names == ["B", "B/x", "a", "a/Z", "a/b", "a-c", "ab"]


def test_order_does_not_depend_on_input_order():
    entries = _tree({"d/1": 5, "d/2": 5000, "c": 3})
    assert plan(entries) == plan(list(reversed(entries)))


@pytest.mark.parametrize("bad", ["/abs", "a/../b", "..", "a//b", "./a", "a/.", "", "a\x00b", "bad\udcff"])
def test_unsafe_member_names_are_refused(bad):
    with pytest.raises(StorageError):
        plan([Entry(bad, Kind.FILE, 1)])


def test_a_member_without_its_parent_directory_is_refused():
    with pytest.raises(StorageError, match="parent directory"):
        plan([Entry("a/b", Kind.FILE, 1)])


def test_duplicate_members_are_refused():
    with pytest.raises(StorageError, match="twice"):
        plan([Entry("a", Kind.DIR), Entry("a", Kind.DIR)])


@given(st.integers(min_value=0, max_value=20000), st.sampled_from(["path", "comment", "size"]))
def test_pax_record_length_counts_itself(n, key):
    rec = pax_record(key, b"v" * n)
    length, _, rest = rec.partition(b" ")
    assert int(length) == len(rec)
    assert rest == key.encode() + b"=" + b"v" * n + b"\n"


@pytest.mark.parametrize("total", [12, 13, 99, 100, 101, 102, 999, 1000, 1001, 4096, 8191])
def test_comment_record_has_exactly_the_requested_length(total):
    rec = comment_record(total)
    assert len(rec) == total and int(rec.split(b" ")[0]) == total


def test_comment_record_refuses_impossible_lengths():
    with pytest.raises(ValueError):
        comment_record(11)


def test_header_fields_are_fixed_owner_time_and_modes():
    blob = _render(plan(_tree({"docker/registry/v2/blobs/sha256/ab/data": 5000, "docker/l": 71})))
    members = _read_back(blob)
    for m in members.values():
        assert (m.uid, m.gid, m.uname, m.gname, m.mtime) == (0, 0, "", "", 0)
        assert m.mode == (0o755 if m.isdir() else 0o644)
        assert m.isdir() or m.isfile()


def test_large_files_start_on_4k_and_small_ones_stay_compact():
    tp = plan(_tree({"d/big": ALIGN, "d/tiny": 71, "d/almost": ALIGN - 1, "d/odd": 3 * ALIGN + 7}))
    by = {pm.entry.name: pm for pm in tp.members}
    for name in ("d/big", "d/odd"):
        assert by[name].data_offset % ALIGN == 0, name
        assert by[name].aligned
    for name in ("d", "d/tiny", "d/almost"):
        assert len(by[name].header) == BLOCK, name  # one ustar block, no pax, no filler
    assert data_regions(by["d/odd"]) == (3 * ALIGN, 7)
    assert data_regions(by["d/tiny"]) == (0, 71)


def test_registry_blob_paths_longer_than_100_bytes_round_trip():
    hex_ = "ab" * 32
    name = f"docker/registry/v2/blobs/sha256/ab/{hex_}/data"
    assert len(name) > 100
    long_repo = "docker/registry/v2/repositories/" + "/".join(["n" * 60] * 5) + "/link"
    tp = plan(_tree({name: 10, long_repo: 71, name.replace("/data", "/big"): 9000}))
    assert set(_read_back(_render(tp))) >= {name, long_repo}


def test_sizes_beyond_ustar_use_a_pax_size_record():
    big = 9 * 1024**3
    tp = plan([Entry("d", Kind.DIR), Entry("d/huge", Kind.FILE, big)])
    pm = tp.members[1]
    assert b"size=%d\n" % big in pm.header
    assert pm.data_offset % ALIGN == 0
    assert tp.size == pm.end + 2 * BLOCK


def test_plan_depends_on_mtime_only_through_headers():
    a, b = plan(_tree({"x/y": 5000}), mtime=0), plan(_tree({"x/y": 5000}), mtime=1700000000)
    assert [pm.data_offset for pm in a.members] == [pm.data_offset for pm in b.members]
    assert a.members[0].header != b.members[0].header


_names = st.text(alphabet="abcdefgh-_.0123456789é", min_size=1, max_size=70).filter(
    lambda s: s not in (".", "..")
)


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.lists(_names, min_size=1, max_size=4).map("/".join),
        st.one_of(st.integers(0, 600), st.integers(ALIGN - 2, ALIGN + 2), st.integers(0, 3 * ALIGN)),
        min_size=1,
        max_size=12,
    )
)
def test_any_tree_round_trips_through_tarfile_with_aligned_data(files):
    dirs = directories_of(list(files))
    files = {n: s for n, s in files.items() if n not in dirs}  # a name cannot be both
    tp = plan(_tree(files))
    blob = _render(tp)
    assert len(blob) % BLOCK == 0
    for pm in tp.members:
        if pm.entry.kind is Kind.FILE and pm.entry.size >= ALIGN:
            assert pm.data_offset % ALIGN == 0
    members = _read_back(blob)
    assert {n: m.size for n, m in members.items() if m.isfile()} == files
    assert {n for n, m in members.items() if m.isdir()} == dirs


# --- leading members: the contents file goes first ------------------------------------------
def test_leading_files_come_first_in_the_given_order_and_the_tree_stays_aligned():
    tree = _tree({"docker/registry/v2/blobs/sha256/aa/" + "a" * 64 + "/data": 3 * ALIGN + 5})
    first = [Entry("layover/contents.json", Kind.FILE, 5000), Entry("layover/README.txt", Kind.FILE, 10)]
    tp = plan(tree, first=first)
    assert [pm.entry.name for pm in tp.members[:2]] == ["layover/contents.json", "layover/README.txt"]
    assert tp.members[0].offset == 0
    assert all(pm.data_offset % ALIGN == 0 for pm in tp.members if pm.aligned)
    members = _read_back(_render(tp))
    assert next(iter(members)) == "layover/contents.json"
    assert set(members) == {e.name for e in [*first, *tree]}


@pytest.mark.parametrize(
    "bad",
    [
        [Entry("docker", Kind.FILE, 1)],  # clashes with the tree's directory
        [Entry("layover/x", Kind.DIR)],  # only files lead
        [Entry("a", Kind.FILE, 1), Entry("a", Kind.FILE, 2)],
        [Entry("../contents.json", Kind.FILE, 1)],
    ],
)
def test_bad_leading_members_are_refused(bad):
    with pytest.raises(StorageError):
        plan(_tree({"docker/x": 1}), first=bad)
