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
        # any bytes: the error is one possible outcome, checked here
        assert e.problems and all(isinstance(n, int) and n >= 1 for n, _, _ in e.problems)  # noqa: PT017
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
        assert all(n >= 1 for n, _, _ in e.problems)  # noqa: PT017 - one possible outcome
    else:
        for ref in got.refs:
            assert ".." not in ref.repository.split("/") and ref.repository.isascii()


# --- hostile lines among good ones: the typed error names exactly the hostile line -----------
_good_line = st.builds(
    lambda ns, name, tag: f"{ns}/{name}:{tag}",
    st.sampled_from(["apps", "base", "platform/x", "a-b"]),
    st.from_regex(r"[a-z0-9]{1,8}(?:[._-][a-z0-9]{1,4})?", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,10}", fullmatch=True),
)
_LOOKALIKES = {
    "a": "\u0430",
    "e": "\u0435",
    "o": "\u043e",
    "p": "\u0440",
    "/": "\u2215",
    ":": "\uff1a",
    "l": "\u04cf",
    "1": "\uff11",
    "-": "\u2010",
}


def _hostile(kind: str, good: str, rng_index: int) -> bytes:
    name, _, tag = good.rpartition(":")
    if kind == "traversal":
        return f"{name}/../../etc:{tag}".encode() if rng_index % 2 else f"../{good}".encode()
    if kind == "dot-segment":
        return f"./{good}".encode()
    if kind == "absolute":
        return f"/{good}".encode()
    if kind == "nul":
        at = rng_index % len(good)
        return (good[:at] + "\x00" + good[at:]).encode()
    if kind == "long":
        return f"{name}{'x' * (300 + rng_index)}:{tag}".encode()
    if kind == "huge-line":
        return ("a" * (5000 + rng_index)).encode()
    if kind == "non-utf8":
        return good.encode()[:3] + b"\xff\xfe" + good.encode()[3:]
    if kind == "lookalike":
        swappable = [i for i, c in enumerate(name) if c in _LOOKALIKES]
        i = swappable[rng_index % len(swappable)]
        return (name[:i] + _LOOKALIKES[name[i]] + name[i + 1 :] + ":" + tag).encode()
    if kind == "upper":
        return (name[:1].upper() + name[1:] + ":" + tag).encode()
    if kind == "empty-tag":
        return f"{name}:".encode()
    raise AssertionError(kind)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_good_line, min_size=0, max_size=6, unique=True),
    st.integers(min_value=0, max_value=6),
    st.sampled_from(
        [
            "traversal",
            "dot-segment",
            "absolute",
            "nul",
            "long",
            "huge-line",
            "non-utf8",
            "lookalike",
            "upper",
            "empty-tag",
        ]
    ),
    _good_line,
    st.integers(min_value=0, max_value=1000),
    st.booleans(),
)
def test_one_hostile_line_among_good_ones_is_named_by_its_line_number(good, at, kind, victim, n, crlf):
    at = min(at, len(good))
    hostile = _hostile(kind, victim, n)
    lines = [g.encode() for g in good[:at]] + [hostile] + [g.encode() for g in good[at:]]
    data = (b"\r\n" if crlf else b"\n").join(lines) + b"\n"
    with pytest.raises(ImageListError) as info:
        imagelist.parse_bytes(data, "fuzz.list")
    assert [n_ for n_, _, _ in info.value.problems] == [at + 1], (kind, info.value.problems)
    assert f"fuzz.list:{at + 1}:" in str(info.value)
    assert "\x00" not in str(info.value).replace("\\x00", "")  # the raw NUL is never echoed
