import pytest

from layover.errors import ReferenceError_
from layover.reference import Digest, ImageRef

HEX = "ab" * 32


@pytest.mark.parametrize(
    ("text", "repo", "tag", "digest", "registry"),
    [
        ("app:1", "app", "1", None, None),
        ("lib/app:1.0-rc_2", "lib/app", "1.0-rc_2", None, None),
        ("a/b/c/d:latest", "a/b/c/d", "latest", None, None),
        ("ci.example.com/lib/app:1", "lib/app", "1", None, "ci.example.com"),
        ("ci.example.com:5000/lib/app:1", "lib/app", "1", None, "ci.example.com:5000"),
        ("localhost/app:1", "app", "1", None, "localhost"),
        ("127.0.0.1:5000/app:1", "app", "1", None, "127.0.0.1:5000"),
        (f"app@sha256:{HEX}", "app", None, Digest(HEX), None),
        (f"app:1@sha256:{HEX}", "app", "1", Digest(HEX), None),
        ("a__b/c-d/e---f.g:x", "a__b/c-d/e---f.g", "x", None, None),
    ],
)
def test_valid_references(text, repo, tag, digest, registry):
    ref = ImageRef.parse(text)
    assert (ref.repository, ref.tag, ref.digest, ref.registry) == (repo, tag, digest, registry)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("App:1", "lower-case"),
        ("lib/App:1", "lower-case"),
        ("app", "needs a tag"),
        ("app:", "tag must be"),
        ("app:.hidden", "tag must be"),
        ("app:" + "x" * 129, "tag must be"),
        ("../etc/passwd:1", "invalid"),
        ("/abs/path:1", "path component"),
        ("lib//app:1", "path component"),
        ("lib/./app:1", "path component"),
        ("_internal/app:1", "invalid path component"),
        ("app@sha256:abc", "64"),
        ("app@md5:" + "a" * 32, "sha256"),
        (f"app@sha256:{HEX.upper()}", "64"),
        ("app :1", "whitespace"),
        ("ａpp:1", "ASCII"),  # full-width look-alike
        ("app\x00:1", "ASCII"),
        ("a" * 256 + ":1", "longer than 255"),
        ("ex ample.com/app:1", "whitespace"),
        ("-bad.example.com/app:1", "registry host"),
    ],
)
def test_invalid_references(text, reason):
    with pytest.raises(ReferenceError_) as info:
        ImageRef.parse(text)
    assert reason in str(info.value)


def test_source_and_destination_forms():
    pinned = ImageRef.parse(f"ci.local:5000/lib/app:1@sha256:{HEX}")
    assert pinned.source_suffix == f"lib/app@sha256:{HEX}"  # read the exact bytes
    assert pinned.destination_suffix == "lib/app:1"  # and write them under the tag
    assert pinned.at("127.0.0.1:9") == f"127.0.0.1:9/lib/app@sha256:{HEX}"
    assert str(pinned) == f"lib/app:1@sha256:{HEX}"
    by_digest = ImageRef.parse(f"lib/app@sha256:{HEX}")
    assert by_digest.destination_suffix == f"lib/app@sha256:{HEX}"


def test_host_does_not_change_identity():
    assert ImageRef.parse("a.b/x:1").key == ImageRef.parse("x:1").key


def test_digest_compares_in_full():
    a, b = Digest("0" * 63 + "1"), Digest("0" * 63 + "2")
    assert a != b and str(a).startswith("sha256:")
    with pytest.raises(ReferenceError_):
        Digest.parse("sha256:" + "0" * 63)
