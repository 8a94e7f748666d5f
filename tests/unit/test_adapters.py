"""Pure parts of the adapters: the runner's contract, skopeo stderr parsing and classification
(on stderr captured from real skopeo 1.9.3 runs, tests/unit/data/skopeo/), ldd parsing, the
registry config, mountinfo parsing."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from layover import naming
from layover.adapters import overlay, skopeo
from layover.adapters.registry import render_config
from layover.adapters.registry_image import parse_ldd
from layover.adapters.run import run
from layover.errors import AuthError, CommandError, ImageNotFoundError, TransientCommandError, brief
from layover.reference import Digest

SAMPLES = Path(__file__).parent / "data" / "skopeo"
LAYER_A = Digest("03e0c7f149affadb16a5c9950d38e64af8386542e9615d0db40ecd520dfed184")
LAYER_B = Digest("bb5d0a3d3bcb04d85d8dff401d46491cc2c5797c14a1348f7c3eb314e228c41a")
CONFIG = Digest("6b54c52a42814945d783de0800d27932457aa6c3f88686459b41019878be8818")
PY = sys.executable


def sample(name: str) -> str:
    return (SAMPLES / f"{name}.stderr").read_text()


# --- run ----------------------------------------------------------------------------------
def test_run_returns_output_and_timing():
    done = run([PY, "-c", "import sys; sys.stdout.write('out'); sys.stderr.write('err')"])
    assert (done.returncode, done.stdout, done.stderr, done.text) == (0, b"out", "err", "out")
    assert done.seconds > 0


def test_run_passes_input_and_env_without_a_shell():
    done = run(
        [PY, "-c", "import os,sys; print(os.environ['X'], sys.stdin.read())"],
        input=b"$HOME;",
        env={"X": "$(id)"},
    )
    assert done.text.strip() == "$(id) $HOME;"


def test_run_nonzero_raises_command_error_with_argv_code_stderr():
    with pytest.raises(CommandError) as info:
        run([PY, "-c", "import sys; sys.stderr.write('bad thing\\n'); sys.exit(3)"])
    e = info.value
    assert type(e) is CommandError
    assert (e.returncode, e.argv[0], e.stderr) == (3, PY, "bad thing\n")
    assert "bad thing" in str(e)


def test_run_classify_picks_the_subclass():
    def classify(argv, code, stderr):
        return ImageNotFoundError(f"{argv[0]}: gone", detail=stderr) if "gone" in stderr else None

    with pytest.raises(ImageNotFoundError):
        run([PY, "-c", "import sys; sys.stderr.write('gone'); sys.exit(1)"], classify=classify)
    with pytest.raises(CommandError) as info:
        run([PY, "-c", "import sys; sys.exit(1)"], classify=classify)
    assert type(info.value) is CommandError


def test_run_timeout_is_transient():
    with pytest.raises(TransientCommandError, match="timed out"):
        run([PY, "-c", "import time; time.sleep(10)"], timeout=0.3)


def test_run_missing_program_is_command_error():
    with pytest.raises(CommandError, match="not found") as info:
        run(["layover-no-such-program"])
    assert info.value.returncode == 127


def test_run_redacts_secrets_in_log_and_error(caplog):
    caplog.set_level(logging.DEBUG, logger="layover.adapters.run")
    with pytest.raises(CommandError) as info:
        run(
            [PY, "-c", "import sys; sys.stderr.write(sys.argv[1]); sys.exit(1)", "pw=hunter2"],
            secrets=["hunter2"],
        )
    assert "hunter2" not in caplog.text and "pw=***" in caplog.text
    assert "hunter2" not in " ".join(info.value.argv) + info.value.stderr + str(info.value)


# --- skopeo debug parser --------------------------------------------------------------------
def test_parse_fresh_copy_uploads_every_blob():
    copied, skipped = skopeo.parse_debug(sample("copy_fresh"))
    assert copied == {LAYER_A, LAYER_B, CONFIG}
    assert skipped == frozenset()


def test_parse_second_copy_skips_layers_and_config():
    copied, skipped = skopeo.parse_debug(sample("copy_again_same_repo"))
    assert copied == frozenset()
    assert skipped == {LAYER_A, LAYER_B, CONFIG}


def test_parse_cross_repo_mount_counts_as_skipped():
    copied, skipped = skopeo.parse_debug(sample("copy_other_repo_mounted"))
    assert copied == {CONFIG}
    assert skipped == {LAYER_A, LAYER_B}


# --- skopeo failure classifier --------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "error", "hint"),
    [
        ("src_connection_refused", TransientCommandError, skopeo.HINT_TRANSIENT),
        ("dest_connection_refused", TransientCommandError, skopeo.HINT_TRANSIENT),
        ("src_eof", TransientCommandError, skopeo.HINT_TRANSIENT),
        ("src_500", TransientCommandError, skopeo.HINT_TRANSIENT),
        ("src_502", TransientCommandError, skopeo.HINT_TRANSIENT),
        ("src_ping_503", TransientCommandError, skopeo.HINT_TRANSIENT),
        ("src_429_toomanyrequests", TransientCommandError, skopeo.HINT_TRANSIENT),
        ("src_manifest_unknown_repo", ImageNotFoundError, skopeo.HINT_NOT_FOUND),
        ("src_manifest_unknown_tag", ImageNotFoundError, skopeo.HINT_NOT_FOUND),
        ("src_manifest_unknown_digest", ImageNotFoundError, skopeo.HINT_NOT_FOUND),
        ("src_name_unknown", ImageNotFoundError, skopeo.HINT_NOT_FOUND),
        ("src_401_unauthorized", AuthError, skopeo.hint_auth()),
        ("src_403_denied", AuthError, skopeo.hint_auth()),
        ("dest_read_only_blob", CommandError, skopeo.HINT_READ_ONLY),
        ("dest_read_only_manifest", CommandError, skopeo.HINT_READ_ONLY),
    ],
)
def test_classify_real_failures(name, error, hint):
    e = skopeo.classify(("skopeo", "copy"), 1, sample(name))
    assert type(e) is error
    assert hint in str(e)


@pytest.mark.parametrize(
    ("name", "line"),
    [
        ("src_manifest_unknown_repo", "reading manifest v1 in 127.0.0.1:15501/lib/missing: manifest unknown"),
        ("src_401_unauthorized", "reading manifest v1 in 127.0.0.1:15511/r401/img: unauthorized"),
        (
            "dest_read_only_blob",
            "skopeo exited 1: writing blob: initiating layer upload to "
            "/v2/new/hello/blobs/uploads/ in 127.0.0.1:15502: StatusCode: 405, "
            "Method not allowed",
        ),
    ],
)
def test_a_failed_copy_says_one_short_line_and_keeps_skopeos_text_for_the_log(name, line):
    e = skopeo.classify(("skopeo", "copy"), 1, sample(name))
    assert brief(e) == line
    assert "level=fatal" not in str(e) and "\n" not in str(e)
    assert e.detail == sample(name)


def test_hints_name_the_flag_on_the_cli_and_the_parameter_in_prefect():
    naming.use("prefect")
    e = skopeo.classify(("skopeo", "copy"), 1, sample("src_401_unauthorized"))
    assert "request.src_authfile" in e.hint
    naming.use("cli")
    try:
        e = skopeo.classify(("skopeo", "copy"), 1, sample("src_401_unauthorized"))
        assert "--src-authfile" in e.hint and "request." not in e.hint
    finally:
        naming.use("prefect")


def test_classify_ignores_debug_noise_before_the_fatal_line():
    # Successful runs are full of "not present" and HTTPS->HTTP fallback lines; only the fatal
    # line decides.
    noise = sample("copy_fresh")
    stderr = noise + 'time="x" level=fatal msg="writing manifest: something odd"\n'
    assert type(skopeo.classify(("skopeo",), 1, stderr)) is CommandError


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (
            'reading blob sha256:aa: Get "http://h/v2/x": read tcp 127.0.0.1:1->127.0.0.1:2: '
            "read: connection reset by peer",
            TransientCommandError,
        ),
        ('pinging container registry h: Get "https://h/v2/": dial tcp: i/o timeout', TransientCommandError),
        (
            "writing manifest: uploading manifest v1 to h/x: manifest blob unknown: blob unknown to registry",
            CommandError,
        ),
        ("digest sha256:401403 ... unsupported", CommandError),  # digits in a digest are not 401
    ],
)
def test_classify_messages(message, error):
    stderr = f'time="x" level=fatal msg="{message}"\n'
    assert type(skopeo.classify(("skopeo",), 1, stderr)) is error


def test_fatal_message_unescapes_quotes_and_falls_back_to_last_line():
    assert skopeo.fatal_message('a\ntime="t" level=fatal msg="Get \\"x\\": EOF"\n') == 'Get "x": EOF'
    assert skopeo.fatal_message("first\nlast line\n\n") == "last line"


# --- ldd, registry config, mountinfo --------------------------------------------------------
def test_parse_ldd():
    out = (
        "\tlinux-vdso.so.1 (0x00007ffc)\n"
        "\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007fd9)\n"
        "\t/lib64/ld-linux-x86-64.so.2 (0x00007fd9)\n"
    )
    assert parse_ldd(out) == [Path("/lib/x86_64-linux-gnu/libc.so.6"), Path("/lib64/ld-linux-x86-64.so.2")]


def test_registry_config_has_no_stale_cache_and_no_upload_purging():
    rw = render_config(5001, read_only=False, validation_urls_allow=(".*",))
    ro = render_config(5001, read_only=True, validation_urls_allow=(".*",))
    for cfg in (rw, ro):
        assert "cache" not in cfg and "blobdescriptor" not in cfg
        assert "uploadpurging:\n      enabled: false" in cfg
        assert "addr: 127.0.0.1:5001" in cfg
        assert '- ".*"' in cfg
        assert "accesslog:\n    disabled: false" in cfg
    assert "readonly:\n      enabled: false" in rw
    assert "readonly:\n      enabled: true" in ro


def test_registry_config_tls_and_auth_sections():
    import yaml

    cfg = yaml.safe_load(
        render_config(5001, read_only=False, validation_urls_allow=(), tls=True, auth_htpasswd=True)
    )
    assert cfg["http"] == {
        "addr": "127.0.0.1:5001",
        "tls": {"certificate": "/etc/docker/registry/tls.crt", "key": "/etc/docker/registry/tls.key"},
    }
    assert cfg["auth"]["htpasswd"]["path"] == "/etc/docker/registry/htpasswd"
    assert "tls" not in yaml.safe_load(render_config(5001, read_only=False, validation_urls_allow=()))["http"]


def test_mountinfo_parsing_unescapes_paths(tmp_path, monkeypatch):
    info = tmp_path / "mountinfo"
    info.write_text(
        "22 1 0:21 / /proc rw,nosuid shared:12 - proc proc rw\n"
        "99 22 0:50 / /tmp/a\\040b/merged rw,relatime - overlay overlay "
        "rw,lowerdir=/tmp/a\\040b/lower,upperdir=/tmp/a\\040b/upper,workdir=/tmp/a\\040b/work\n"
    )
    monkeypatch.setattr(overlay, "_MOUNTINFO", info)
    entry = overlay.mount_entry(Path("/tmp/a b/merged"))
    assert entry is not None
    assert (entry.mount_point, entry.fstype) == (Path("/tmp/a b/merged"), "overlay")
    assert not overlay.is_mounted(Path("/tmp/a b"))
