"""The ``importhooks`` command as a newcomer meets it: every case through the installed script, a real process."""

from __future__ import annotations

import gzip
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from importhooks.errors import ConfigError
from importhooks.settings import MAX_CONFIG_BYTES, load_settings

from . import images, ova_images
from .test_cli import assert_one_line_error, write_config

SCRIPT = Path(sys.executable).with_name("importhooks")
#: The address space a command may use: far more than an audit needs, far less than /dev/zero read whole.
MEMORY_LIMIT = 2 << 30


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def cli(*argv: object, pythonpath: Path | None = None, stdout: Any = subprocess.PIPE,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([str(SCRIPT), *(str(arg) for arg in argv)], stdout=stdout, stderr=subprocess.PIPE,
                          text=True, timeout=timeout, check=False, env=env, preexec_fn=_limit_memory)


@pytest.fixture
def config(tmp_path: Path, workdir: Path) -> Path:
    return write_config(tmp_path / "importhooks.toml", workdir)


def records(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


# --- --config: anything that is not a small settings file is one line and exit 2 ---------------------------


def _not_utf8(tmp_path: Path) -> Path:
    path = tmp_path / "latin1.toml"
    path.write_bytes("os_types = ['linux']  # caf\xe9\n".encode("latin-1"))
    return path


def _fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo.toml"
    os.mkfifo(path)  # no writer ever opens it: reading it would block forever
    return path


def _one_gigabyte(tmp_path: Path) -> Path:
    path = tmp_path / "huge.toml"
    with open(path, "wb") as handle:
        handle.truncate(1 << 30)
    return path


def _deep(tmp_path: Path) -> Path:
    path = tmp_path / "deep.toml"
    path.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    return path


@pytest.mark.parametrize(("make", "words"), [
    (lambda tmp_path: tmp_path, ["not a regular file"]),
    (_not_utf8, ["not UTF-8 text", "byte 27"]),
    (_fifo, ["not a regular file"]),
    (lambda _tmp_path: Path("/dev/zero"), ["not a regular file", "/dev/zero"]),
    (_one_gigabyte, ["larger than 1.0 MiB"]),
    # A regular file whose st_size is 0 and whose content is hundreds of GiB: only the read loop's bound stops it.
    (lambda _tmp_path: Path("/proc/self/pagemap"), ["larger than 1.0 MiB"]),
    (_deep, ["not valid TOML", "nested too deeply"]),
], ids=["directory", "not-utf8", "fifo", "dev-zero", "1GB", "proc-pagemap", "deep-nesting"])
def test_config_that_is_no_settings_file_is_one_line_and_exit_2(tmp_path, raw_file, make, words):
    config = make(tmp_path)
    for argv in (["audit", raw_file], ["info"]):
        started = time.monotonic()
        done = cli(*argv, "--config", config, timeout=60)
        assert done.returncode == 2, done.stderr
        assert done.stdout == ""
        assert_one_line_error(done.stderr, "configuration error", *words)
        assert time.monotonic() - started < 30


def test_load_settings_takes_exactly_its_bound(tmp_path):
    config = tmp_path / "long.toml"
    body = "os_types = ['linux']\n"
    config.write_text(body + "#" * (MAX_CONFIG_BYTES - len(body) - 1) + "\n")
    assert config.stat().st_size == MAX_CONFIG_BYTES == 1 << 20  # the documented bound
    assert load_settings(config).os_types == ("linux",)
    with open(config, "a") as handle:
        handle.write("\n")
    with pytest.raises(ConfigError, match=r"larger than 1\.0 MiB"):
        load_settings(config)


def test_config_with_a_byte_order_mark_loads(tmp_path):
    config = tmp_path / "bom.toml"
    config.write_bytes(b"\xef\xbb\xbfos_types = ['linux']\n")
    assert load_settings(config).os_types == ("linux",)


# --- claims that importhooks does not know are usage errors --------------------------------------------------


@pytest.mark.parametrize(("option", "value", "known", "hint"), [
    ("--disk-format", "bogus", "raw, qcow2, vmdk", ""),
    ("--disk-format", "QCOW2", "raw, qcow2, vmdk", "did you mean 'qcow2'?"),
    ("--container-format", "tarball", "bare, ova, ovf, compressed", ""),
])
def test_unknown_claimed_format_is_a_usage_error(config, raw_file, option, value, known, hint):
    done = cli("audit", raw_file, option, value, "--config", config)
    assert done.returncode == 2
    assert done.stdout == ""
    assert_one_line_error(done.stderr, option, "unknown", repr(value), f"known: {known}", hint)


def test_known_but_refused_claim_is_still_a_reject(config, raw_file):
    done = cli("audit", raw_file, "--disk-format", "luks", "--format", "json", "--config", config)
    assert done.returncode == 1
    assert [f["code"] for f in records(done.stdout)[0]["findings"]] == ["claims.disk_format_not_allowed"]


# --- who imports: --user, --project, --role, --property, seen by a site plugin -------------------------------

POLICY = '''
from importhooks import FindingCode, hookimpl

DENIED = FindingCode("newcomer_policy.denied", "Only importers of project web may import.", "A test policy.")
NAME = FindingCode("newcomer_policy.name", "The image name must start with the project.", "A test policy.")


@hookimpl
def importhooks_finding_codes():
    return [DENIED, NAME]


@hookimpl
def importhooks_pre_validate(context):
    requester = context.requester
    if requester.project != "web" or "importer" not in requester.roles:
        context.report(DENIED, detail=f"project {requester.project or '-'}, roles {sorted(requester.roles)}")
    if not context.claims.properties.get("name", "").startswith(f"{requester.project}-"):
        context.report(NAME)
'''


@pytest.fixture
def policy(tmp_path: Path, workdir: Path) -> tuple[Path, Path]:
    """A site plugin module deciding by project, role and image name, and a config enabling it."""
    modules = tmp_path / "site"
    modules.mkdir()
    (modules / "newcomer_policy.py").write_text(POLICY)
    return modules, write_config(tmp_path / "policy.toml", workdir, plugins="enabled = ['newcomer_policy']")


def _codes(done: subprocess.CompletedProcess[str]) -> list[list[str]]:
    return [sorted(f["code"] for f in record["findings"]) for record in records(done.stdout)]


def test_requester_and_properties_reach_a_site_plugin(policy, raw_file):
    modules, config = policy
    run = ["audit", raw_file, "--format", "json", "--config", config]
    done = cli(*run, pythonpath=modules)
    assert done.returncode == 1, done.stderr
    assert _codes(done) == [["newcomer_policy.denied", "newcomer_policy.name"]]
    assert records(done.stdout)[0]["findings"][0]["detail"] == "project -, roles []"

    done = cli(*run, "--user", "alice", "--project", "web", "--role", "member", "--role", "importer",
               "--property", "name=web-01", "--property", "hw_disk_bus=scsi", pythonpath=modules)
    assert done.returncode == 0, done.stdout
    assert _codes(done) == [[]]

    done = cli(*run, "--project", "web", "--role", "member", "--property", "name=web-01", pythonpath=modules)
    assert _codes(done) == [["newcomer_policy.denied"]]
    done = cli(*run, "--project", "web", "--role", "importer", "--property", "name=db-01", pythonpath=modules)
    assert _codes(done) == [["newcomer_policy.name"]]
    done = cli(*run, "--property", "os_type=linux", pythonpath=modules)  # protected: claimed in its own field
    assert "properties.protected" in _codes(done)[0]


def test_text_says_once_who_the_requester_is(policy, raw_file, tmp_path):
    modules, config = policy
    second = images.raw_image(tmp_path / "second.raw")
    done = cli("audit", raw_file, second, "--config", config, pythonpath=modules)
    assert done.returncode == 1
    assert done.stdout.count("requester: anonymous (no --user, --project or --role given)\n") == 1
    assert done.stdout.count("anonymous") == 1
    assert done.stdout.endswith("requester: anonymous (no --user, --project or --role given)\n"
                                "2 paths: 0 accepted, 2 rejected\n")
    done = cli("audit", raw_file, second, "--config", config, "--user", "alice", "--project", "web",
               "--role", "importer", "--role", "member", "--property", "name=web-1", pythonpath=modules)
    assert done.returncode == 0, done.stdout
    assert done.stdout.count("requester: user alice; project web; roles importer, member\n") == 1
    assert "anonymous" not in done.stdout


@pytest.mark.parametrize(("argv", "words"), [
    (["--property", "name"], ["--property", "expected KEY=VALUE", "'name'"]),
    (["--property", "=x"], ["--property", "expected KEY=VALUE"]),
    (["--property", "name=a", "--property", "name=b"], ["--property name is given twice"]),
    (["--project", ""], ["--project", "expected a name, got an empty one"]),
    (["--role", "member", "--role", " "], ["--role", "expected a name"]),
])
def test_bad_property_or_requester_is_a_usage_error(config, raw_file, argv, words):
    done = cli("audit", raw_file, *argv, "--config", config)
    assert done.returncode == 2 and done.stdout == ""
    assert_one_line_error(done.stderr, *words)


# --- containers without a claim ------------------------------------------------------------------------------


def test_unclaimed_container_is_unpacked_and_inspected(config, tmp_path, workdir):
    disk = images.raw_image(tmp_path / "disk.raw")
    packed = tmp_path / "disk.raw.gz"
    packed.write_bytes(gzip.compress(disk.read_bytes()))
    done = cli("audit", packed, "--config", config)
    assert done.returncode == 0, done.stdout
    assert "None" not in done.stdout
    assert "container_format=gzip, compression=gzip" in done.stdout
    assert "2. decompressed, " in done.stdout
    narrow = write_config(tmp_path / "bare.toml", workdir, "container_formats = ['bare']")
    done = cli("audit", packed, "--format", "json", "--config", narrow)
    assert done.returncode == 1
    (finding,) = records(done.stdout)[0]["findings"]
    assert finding["code"] == "container.not_allowed"
    assert finding["message"] == "The image is a gzip file; this cloud accepts only these container formats: bare."
    assert "None" not in finding["detail"]


def test_an_ova_is_audited_by_default_and_unknown_facts_are_left_out(config, tmp_path):
    disk = ova_images.stream_vmdk(tmp_path / "disk.vmdk")
    path = ova_images.package(disk, os_type="").write(tmp_path / "vm.ova")  # no OS in the descriptor
    done = cli("audit", "-v", path, "--config", config)
    assert done.returncode == 0, done.stdout
    assert "None" not in done.stdout and "True" not in done.stdout
    assert "1. staged, " in done.stdout and "container_format=tar" in done.stdout
    assert "2. extracted, " in done.stdout and "disk_format=vmdk" in done.stdout
    assert "compressed_clusters=true" in done.stdout
    assert "ovf_os_type" not in done.stdout  # null in JSON, left out of the text
    assert "image.import.finished" in done.stderr and "libarchive" not in done.stderr
    done = cli("audit", path, "--format", "json", "--config", config)
    assert records(done.stdout)[0]["layers"][0]["ovf_os_type"] is None


# --- messages --------------------------------------------------------------------------------------------------

BOOM = '''
from importhooks import hookimpl


@hookimpl
def importhooks_inspect(context):
    raise RuntimeError("boom")
'''

BAD_SIGNATURE = '''
from importhooks import hookimpl


@hookimpl
def importhooks_inspect(ctx):
    pass
'''


def test_a_failing_plugin_names_its_exception_once(tmp_path, workdir, raw_file):
    (tmp_path / "boom_plugin.py").write_text(BOOM)
    config = write_config(tmp_path / "boom.toml", workdir, plugins="enabled = ['boom_plugin']")
    done = cli("audit", raw_file, "--format", "json", "--config", config, pythonpath=tmp_path)
    assert done.returncode == 1
    (finding,) = records(done.stdout)[0]["findings"]
    assert (finding["code"], finding["detail"]) == ("pipeline.plugin_failed", "RuntimeError: boom")


def test_a_multi_line_error_is_one_line_without_escaped_newlines(tmp_path, workdir, raw_file):
    (tmp_path / "bad_signature.py").write_text(BAD_SIGNATURE)
    config = write_config(tmp_path / "sig.toml", workdir, plugins="enabled = ['bad_signature']")
    done = cli("audit", raw_file, "--config", config, pythonpath=tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert_one_line_error(done.stderr, "plugin error", "bad_signature", "'ctx'")
    assert "\\n" not in done.stderr
    bad_value = write_config(tmp_path / "value.toml", workdir, 'os_types = "linux\\nwindows"')  # a newline
    done = cli("info", "--config", bad_value)
    assert done.returncode == 2
    assert_one_line_error(done.stderr, "os_types", "got 'linux\\nwindows'")  # its repr, not escaped twice


def test_help_is_plain_text():
    for argv in ([], ["audit"], ["plugins"], ["info"], ["schema"]):
        done = cli(*argv, "--help")
        assert done.returncode == 0
        assert "usage: importhooks" in done.stdout
        assert "``" not in done.stdout and ":doc:" not in done.stdout and ":class:" not in done.stdout


# --- a closed pipe, Ctrl-C ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("output", ["text", "json", "sarif"])
def test_a_closed_pipe_ends_quietly_with_the_audit_status(config, raw_file, backing_qcow2, output):
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line, as after '| head -1'
    try:
        done = cli("audit", raw_file, backing_qcow2, "--format", output, "--config", config, stdout=write_end)
    finally:
        os.close(write_end)
    assert done.stderr == ""
    assert done.returncode == 1  # the second path was still audited: its reject is the status


def test_head_reads_the_first_line(config, raw_file, backing_qcow2):
    command = f"{SCRIPT} audit {raw_file} {backing_qcow2} {raw_file} --config {config} | head -1"
    done = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.stdout == f"{raw_file}: ACCEPT\n"
    assert done.stderr == ""
    assert done.returncode == 1


def test_closed_pipe_after_schema_is_no_failure(config):
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = cli("schema", "--config", config, stdout=write_end)
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (0, "")


def test_closed_descriptors_are_no_traceback(config, raw_file, tmp_path):
    for redirect in (">&- 2>&-", ">&-"):  # Python then has no sys.stdout at all
        command = f"{SCRIPT} audit {raw_file} --config {config} {redirect}"
        done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, (redirect, done.stderr)
        assert "Traceback" not in done.stderr
    command = f"{SCRIPT} audit {tmp_path / 'missing.raw'} --config {config} 2>&-"
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120, check=False)
    assert (done.returncode, done.stdout) == (2, "")


SLOW = '''
import os
import time

from importhooks import hookimpl


@hookimpl
def importhooks_inspect(context):
    open(os.environ["SLOW_MARKER"], "w").close()
    while True:  # until the run is halted
        context.check()
        time.sleep(0.05)
'''


def test_ctrl_c_exits_130_and_leaves_no_temp_files(tmp_path, workdir, raw_file):
    (tmp_path / "slow_plugin.py").write_text(SLOW)
    config = write_config(tmp_path / "slow.toml", workdir, plugins="enabled = ['slow_plugin']")
    marker = tmp_path / "started"
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "SLOW_MARKER": str(marker)}
    # A shell without job control starts background commands with SIGINT ignored, and Python keeps an ignored
    # SIGINT ignored: give the CLI the default disposition, as an interactive shell does.
    process = subprocess.Popen([str(SCRIPT), "audit", str(raw_file), "--config", str(config)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists()
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130
    assert err == "importhooks: interrupted\n"
    assert out == ""
    assert list(workdir.iterdir()) == []


# --- SARIF and a path that cannot be audited ---------------------------------------------------------------------

VANISH = '''
from importhooks import hookimpl


@hookimpl
def importhooks_pre_validate(context):
    if context.request.path.name == "first.raw":
        (context.request.path.parent / "second.raw").unlink()
'''


def test_sarif_path_that_cannot_be_audited(tmp_path, workdir):
    first, second = images.raw_image(tmp_path / "first.raw"), images.raw_image(tmp_path / "second.raw")
    (tmp_path / "vanish_plugin.py").write_text(VANISH)
    config = write_config(tmp_path / "vanish.toml", workdir, plugins="enabled = ['vanish_plugin']")
    done = cli("audit", first, second, "--format", "sarif", "--config", config, pythonpath=tmp_path)
    assert done.returncode == 2
    assert_one_line_error(done.stderr, "cannot audit", "second.raw", "No such file")
    (run,) = json.loads(done.stdout)["runs"]
    assert [a["properties"]["verdict"] for a in run["artifacts"]] == ["accept", None]
    (invocation,) = run["invocations"]
    assert invocation["executionSuccessful"] is False
    (notification,) = invocation["toolExecutionNotifications"]
    assert notification["level"] == "error"
    assert notification["message"]["text"].startswith("cannot audit ")
    assert notification["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == second.as_uri()


def test_sarif_missing_path_is_a_usage_error_before_any_audit(config, raw_file, tmp_path):
    done = cli("audit", raw_file, tmp_path / "missing.raw", "--format", "sarif", "--config", config)
    assert done.returncode == 2
    assert done.stdout == ""
    assert_one_line_error(done.stderr, "no such file", "missing.raw")


# --- more of the same kind ----------------------------------------------------------------------------------------


def test_config_before_the_command_and_a_directory_as_path(config, raw_file, tmp_path, workdir):
    narrow = write_config(tmp_path / "qcow2.toml", workdir, "disk_formats = ['qcow2']")
    done = cli("--config", narrow, "audit", raw_file, "--format", "json")  # was: invalid choice 'qcow2.toml'
    assert done.returncode == 1, done.stderr
    assert [f["code"] for f in records(done.stdout)[0]["findings"]] == ["format.not_allowed"]
    done = cli("--config", narrow, "info")
    assert json.loads(done.stdout)["disk-formats"]["value"] == ["qcow2"]
    done = cli("--config", narrow, "info", "--config", config)  # after the command wins
    assert json.loads(done.stdout)["disk-formats"]["value"] != ["qcow2"]
    done = cli("audit", tmp_path, "--config", config)
    assert done.returncode == 2
    assert_one_line_error(done.stderr, "not a regular file", "a directory: give the image files in it",
                          f"{tmp_path}/*")


def test_stdin_dash_and_empty_file(config, tmp_path):
    done = cli("audit", "-", "--config", config)
    assert done.returncode == 2 and done.stdout == ""
    assert_one_line_error(done.stderr, "standard input", "not supported")
    empty = tmp_path / "empty.raw"
    empty.write_bytes(b"")
    done = cli("audit", empty, "--format", "json", "--config", config)
    assert done.returncode == 1
    assert [f["code"] for f in records(done.stdout)[0]["findings"]] == ["data.empty"]
