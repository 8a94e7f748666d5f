import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layover import imagelist
from layover.errors import ImageListError

HEX = "cd" * 32


def test_comments_blanks_crlf_and_hosts():
    text = (
        "# release 7\r\n"
        "\r\n"
        "ci.example.com:5000/lib/app:1.0\r\n"
        "   base/debian:12   # pinned later\n"
        f"tools/x@sha256:{HEX}\n"
    )
    got = imagelist.parse_text(text, "images.list")
    assert [(str(e.ref), e.line) for e in got.entries] == [
        ("lib/app:1.0", 3),
        ("base/debian:12", 4),
        (f"tools/x@sha256:{HEX}", 5),
    ]
    assert got.duplicates == ()


def test_duplicates_are_kept_once_and_reported_once():
    got = imagelist.parse_text("a:1\nci.local/a:1\nb:1\na:1\n")
    assert [str(r) for r in got.refs] == ["a:1", "b:1"]
    assert len(got.duplicates) == 1
    assert got.duplicates[0].lines == (1, 2, 4)


def test_every_bad_line_is_reported_with_its_number():
    text = "good/a:1\nBad/a:1\n\nno-tag\n# fine\nx:1@sha256:short\ngood/b:2\n"
    with pytest.raises(ImageListError) as info:
        imagelist.parse_text(text, "rel.list")
    assert [n for n, _, _ in info.value.problems] == [2, 4, 6]
    msg = str(info.value)
    assert "rel.list:2:" in msg and "rel.list:4:" in msg and "rel.list:6:" in msg
    assert "nothing was copied" in msg


def test_one_tag_with_two_digests_is_an_error():
    with pytest.raises(ImageListError) as info:
        imagelist.parse_text(f"a:1@sha256:{HEX}\na:1@sha256:{'ef' * 32}\n")
    assert info.value.problems[0][0] == 2
    assert "line 1" in info.value.problems[0][2]


def test_non_utf8_and_nul_name_the_line(tmp_path):
    p = tmp_path / "images.list"
    p.write_bytes(b"a:1\nb:\xff\n")
    with pytest.raises(ImageListError) as info:
        imagelist.load(p)
    assert info.value.problems[0][0] == 2 and str(p) in str(info.value)
    p.write_bytes(b"a:1\n\x00\n")
    with pytest.raises(ImageListError) as info:
        imagelist.load(p)
    assert info.value.problems[0][0] == 2


def test_missing_file_says_so(tmp_path):
    with pytest.raises(ImageListError) as info:
        imagelist.load(tmp_path / "nope.list")
    assert "cannot read" in str(info.value)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_give_a_list_or_the_typed_error(data):
    """Hostile input (traversal, NUL, look-alikes, huge lines, non-UTF-8) never escapes the parser."""
    try:
        got = imagelist.parse_bytes(data, "fuzz.list")
    except ImageListError as e:
        assert e.problems and all(isinstance(n, int) and n >= 1 for n, _, _ in e.problems)
        return
    for ref in got.refs:
        for part in ref.repository.split("/"):
            assert part not in ("", ".", "..") and part == part.lower()


hostile = st.sampled_from(
    ["../", "/", "..", "\x00", "Ａ", "A", ":", "@", " ", "a" * 300, "\ud7ff", "é", "sha256:", "#"]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(hostile, st.text(alphabet="abc:/@.-_", max_size=8)), max_size=6))
def test_hostile_fragments(parts):
    text = "".join(parts)
    try:
        got = imagelist.parse_text(text + "\n", "fuzz.list")
    except ImageListError as e:
        assert all(n >= 1 for n, _, _ in e.problems)
    else:
        for ref in got.refs:
            assert ".." not in ref.repository.split("/") and ref.repository.isascii()
