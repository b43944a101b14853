"""The ``importhooks`` command, run in-process through ``main()`` on real image files (and once as a script)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from importhooks import ImportRequest, Pipeline, load_settings
from importhooks.cli.main import ProgressBar, main
from importhooks.server.discovery import import_info, import_schema
from importhooks.text import escape

from . import images


def write_config(path: Path, workdir: Path, extra: str = "", plugins: str = "") -> Path:
    """A TOML settings file: the test's work_dir, site entry points off, plus ``extra`` and ``[plugins]`` lines."""
    path.write_text(f"work_dir = '{workdir}'\n{extra}\n[plugins]\nentry_points = false\n{plugins}\n")
    return path


@pytest.fixture
def config(tmp_path: Path, workdir: Path) -> Path:
    return write_config(tmp_path / "importhooks.toml", workdir)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    status = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def json_lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


# --- audit --format json ---------------------------------------------------------------------------


def test_json_one_line_per_path_accept_and_reject(capsys, config, raw_file, backing_qcow2):
    status, out, err = run_cli(capsys, "audit", raw_file, backing_qcow2, "--format", "json", "--config", config)
    assert status == 1
    assert err == ""
    accepted, rejected = json_lines(out)
    data = raw_file.read_bytes()

    assert accepted["path"] == str(raw_file)
    assert accepted["verdict"] == "accept"
    assert accepted["findings"] == []
    assert accepted["detected"]["disk_format"] == "raw"
    assert accepted["detected"]["virtual_size"] == len(data)
    assert accepted["checksums"]["checksum"] == hashlib.md5(data).hexdigest()
    assert accepted["checksums"]["os_hash_algo"] == "sha512"
    assert accepted["checksums"]["os_hash_value"] == hashlib.sha512(data).hexdigest()
    assert isinstance(accepted["elapsed_s"], float) and accepted["elapsed_s"] >= 0

    assert rejected["path"] == str(backing_qcow2)
    assert rejected["verdict"] == "reject"
    assert rejected["detected"]["disk_format"] == "qcow2"
    assert rejected["checksums"] is None
    (finding,) = [f for f in rejected["findings"] if f["code"] == "qcow2.backing_file"]
    assert set(finding) == {"code", "severity", "stage", "plugin", "message", "detail"}
    assert (finding["severity"], finding["stage"], finding["plugin"]) == ("error", "inspect", "disk_format")
    assert "backing file" in finding["message"]
    assert "backing_file" in finding["detail"]


def test_all_accepted_exits_0(capsys, config, raw_file):
    status, out, _err = run_cli(capsys, "audit", raw_file, "--format", "json", "--config", config)
    assert status == 0
    assert [r["verdict"] for r in json_lines(out)] == ["accept"]


def test_jobs_keep_argument_order(capsys, tmp_path, config):
    # The first file is the largest, so with two workers later files finish before it.
    paths = [images.raw_image(tmp_path / "big.raw", size=32 << 20)]
    for number in range(5):
        if number % 2:
            paths.append(images.qcow2_with_backing_file(tmp_path / f"b{number}.qcow2"))
        else:
            paths.append(images.raw_image(tmp_path / f"r{number}.raw", size=(number + 1) << 16))
    status, out, _err = run_cli(capsys, "audit", *paths, "--jobs", "2", "--format", "json", "--config", config)
    records = json_lines(out)
    assert status == 1
    assert [r["path"] for r in records] == [str(p) for p in paths]
    assert [r["verdict"] for r in records] == ["accept", "accept", "reject", "accept", "reject", "accept"]


def test_max_image_size_flag_overrides_settings(capsys, config, raw_file):
    status, out, _err = run_cli(capsys, "audit", raw_file, "--max-image-size", "512KiB", "--format", "json",
                                "--config", config)
    assert status == 1
    assert [f["code"] for f in json_lines(out)[0]["findings"]] == ["format.virtual_size_too_large"]
    status, out, _err = run_cli(capsys, "audit", raw_file, "--max-image-size", "1MiB", "--format", "json",
                                "--config", config)
    assert status == 0


def test_claims_come_from_the_flags(capsys, config, raw_file):
    status, out, _err = run_cli(capsys, "audit", raw_file, "--disk-format", "qcow2", "--os-type", "plan9",
                                "--format", "json", "--config", config)
    assert status == 1
    codes = {f["code"] for f in json_lines(out)[0]["findings"]}
    assert codes == {"claims.os_type_not_allowed"}  # pre_validate rejects before the data is read
    status, out, _err = run_cli(capsys, "audit", raw_file, "--disk-format", "qcow2", "--os-type", "linux",
                                "--container-format", "bare", "--format", "json", "--config", config)
    assert status == 1
    assert {f["code"] for f in json_lines(out)[0]["findings"]} == {"format.claim_mismatch"}


# --- audit --format text ---------------------------------------------------------------------------


def test_text_output_for_people(capsys, config, raw_file, backing_qcow2):
    status, out, err = run_cli(capsys, "audit", raw_file, backing_qcow2, "--config", config)
    assert status == 1
    assert err == ""  # stderr is no terminal: no progress bar
    accepted, rejected, summary = out.split("\n\n")
    md5 = hashlib.md5(raw_file.read_bytes()).hexdigest()
    assert accepted.startswith(f"{raw_file}: ACCEPT\n")
    assert "findings: none" in accepted
    assert "disk_format=raw" in accepted and "virtual_size=1048576 (1.0 MiB)" in accepted
    assert f"checksum (md5)={md5}" in accepted
    assert rejected.startswith(f"{backing_qcow2}: REJECT\n")
    assert "error qcow2.backing_file [stage inspect, plugin disk_format]" in rejected
    assert "The image refers to a backing file" in rejected
    assert "detail: qcow2: backing_file: Image has a backing file" in rejected
    assert "disk_format=qcow2" in rejected
    assert "checksums: none" in rejected
    assert summary.strip() == ("requester: anonymous (no --user, --project or --role given)\n"
                               "2 paths: 1 accepted, 1 rejected")


def test_text_escapes_terminal_sequences_from_paths(capsys, tmp_path, config):
    evil = images.raw_image(tmp_path / "evil\x1b[2J\x1b]0;pwned\x07\n\u202eexe.raw")
    status, out, _err = run_cli(capsys, "audit", evil, "--config", config)
    assert status == 0
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert out.splitlines()[0] == escape(str(evil)) + ": ACCEPT"
    assert "evil\\x1b[2J\\x1b]0;pwned\\x07\\n\\u202eexe.raw" in out
    # JSON keeps the real name (escaped by JSON itself)
    status, out, _err = run_cli(capsys, "audit", evil, "--format", "json", "--config", config)
    assert "\x1b" not in out
    assert json_lines(out)[0]["path"] == str(evil)


@pytest.mark.parametrize(("text", "shown"), [
    ("plain text: 4 GiB, ünïcode", "plain text: 4 GiB, ünïcode"),
    ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
    ("a\r\nb\tc", "a\\r\\nb\\tc"),
    ("\x9b2J \x7f", "\\x9b2J \\x7f"),  # C1 CSI and DEL
    ("\u202etxt.exe \u200b \u2028", "\\u202etxt.exe \\u200b \\u2028"),
    ("back\\slash", "back\\\\slash"),
    (os.fsdecode(b"bad-\xff-utf8"), "bad-\\udcff-utf8"),
])
def test_escape(text, shown):
    assert escape(text) == shown


def test_verbose_shows_the_notify_log_quiet_by_default(capsys, config, raw_file):
    status, _out, err = run_cli(capsys, "audit", raw_file, "--config", config)
    assert status == 0 and err == ""
    status, _out, err = run_cli(capsys, "audit", "-v", raw_file, "--config", config)
    assert status == 0
    assert "importhooks.notify" in err and "image.import.started" in err and "image.import.finished" in err


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_draws_and_clears(settings, tmp_path):
    path = images.raw_image(tmp_path / "evil\x1b[31m.raw", size=3 << 20)
    stream = TTY()
    bar = ProgressBar(stream, delay=0.0)
    result = Pipeline.from_settings(settings, extra_plugins=[("cli_progress", bar)]).run(ImportRequest(path))
    assert result.accepted
    drawn = stream.getvalue()
    assert re.search(r"^\r\[#+\.*\] +\d+\.\d% inspect evil\\x1b\[31m\.raw\x1b\[K", drawn)
    assert drawn.endswith("\r\x1b[K")  # cleared when the run finished
    assert "\x1b" not in drawn.replace("\x1b[K", "")


def test_progress_bar_waits_a_second(settings, raw_file):
    stream = TTY()
    bar = ProgressBar(stream)
    assert Pipeline.from_settings(settings, extra_plugins=[("cli_progress", bar)]).run(
        ImportRequest(raw_file)).accepted
    assert stream.getvalue() == ""


# --- audit --format sarif --------------------------------------------------------------------------


def test_sarif(capsys, config, raw_file, backing_qcow2):
    status, out, _err = run_cli(capsys, "audit", raw_file, backing_qcow2, "--format", "sarif", "--config", config)
    assert status == 1
    log = json.loads(out)
    assert log["$schema"] == "https://json.schemastore.org/sarif-2.1.0.json"
    assert log["version"] == "2.1.0"
    (run,) = log["runs"]
    driver = run["tool"]["driver"]
    assert driver["name"] == "importhooks"
    assert driver["version"] == importlib.metadata.version("importhooks")
    catalog = Pipeline.from_settings(load_settings(config)).catalog
    rules = {rule["id"]: rule for rule in driver["rules"]}
    assert set(rules) == set(catalog)
    for code, declared in catalog.items():
        assert rules[code]["shortDescription"]["text"] == declared.summary
        assert rules[code]["help"]["text"] == declared.help
        assert rules[code]["fullDescription"]["text"] == declared.help
    assert [a["location"]["uri"] for a in run["artifacts"]] == [raw_file.as_uri(), backing_qcow2.as_uri()]
    assert [a["properties"]["verdict"] for a in run["artifacts"]] == ["accept", "reject"]
    assert run["artifacts"][0]["hashes"]["sha-512"] == hashlib.sha512(raw_file.read_bytes()).hexdigest()
    (result,) = run["results"]
    assert result["ruleId"] == "qcow2.backing_file"
    assert driver["rules"][result["ruleIndex"]]["id"] == "qcow2.backing_file"
    assert result["level"] == "error"
    assert result["message"]["text"].startswith(catalog["qcow2.backing_file"].summary)
    assert "Detail: qcow2: backing_file: Image has a backing file" in result["message"]["text"]
    location = result["locations"][0]["physicalLocation"]["artifactLocation"]
    assert (location["uri"], location["index"]) == (backing_qcow2.as_uri(), 1)
    assert run["invocations"] == [{"executionSuccessful": True}]


def test_sarif_relative_paths_and_accepted_only(capsys, monkeypatch, tmp_path, config, raw_file):
    monkeypatch.chdir(tmp_path)
    status, out, _err = run_cli(capsys, "audit", raw_file.name, "--format", "sarif", "--config", config)
    assert status == 0
    (run,) = json.loads(out)["runs"]
    assert run["results"] == []
    assert run["artifacts"][0]["location"] == {"uri": "disk.raw", "uriBaseId": "%SRCROOT%"}
    assert run["originalUriBaseIds"]["%SRCROOT%"]["uri"] == tmp_path.resolve().as_uri() + "/"


# --- exit status 2 ---------------------------------------------------------------------------------


def assert_one_line_error(err: str, *words: str) -> None:
    assert len(err.splitlines()) == 1, err
    assert err.startswith("importhooks: error: ")
    assert "Traceback" not in err
    for word in words:
        assert word in err


def test_missing_file_or_directory_exits_2_before_auditing(capsys, tmp_path, config, raw_file):
    status, out, err = run_cli(capsys, "audit", raw_file, tmp_path / "nope.raw", "--format", "json",
                               "--config", config)
    assert status == 2
    assert out == ""
    assert_one_line_error(err, "no such file", "nope.raw")
    status, _out, err = run_cli(capsys, "audit", tmp_path, "--config", config)
    assert status == 2
    assert_one_line_error(err, "not a regular file")


def test_bad_size_exits_2(capsys, config, raw_file):
    status, out, err = run_cli(capsys, "audit", raw_file, "--max-image-size", "4 gigs", "--config", config)
    assert status == 2 and out == ""
    assert_one_line_error(err, "--max-image-size", "4 gigs")


@pytest.mark.parametrize(("extra", "plugins", "key"), [
    ("bogus = 1", "", "bogus"),
    ("", "entry_point = false", "plugins.entry_point"),
    ("max_image_size = 'huge'", "", "max_image_size"),
    ("[plugin.nobody]\nx = 1", "", "plugin.nobody"),
])
def test_bad_config_exits_2(capsys, tmp_path, workdir, raw_file, extra, plugins, key):
    config = write_config(tmp_path / "bad.toml", workdir, extra, plugins)
    for argv in (["audit", raw_file], ["plugins"], ["info"], ["schema"]):
        status, out, err = run_cli(capsys, *argv, "--config", config)
        assert status == 2 and out == ""
        assert_one_line_error(err, "configuration error", key)


def test_missing_config_and_bad_plugin_exit_2(capsys, tmp_path, workdir, raw_file):
    status, _out, err = run_cli(capsys, "audit", raw_file, "--config", tmp_path / "none.toml")
    assert status == 2
    assert_one_line_error(err, "none.toml")
    config = write_config(tmp_path / "p.toml", workdir, plugins="enabled = ['no_such_module_here']")
    status, _out, err = run_cli(capsys, "audit", raw_file, "--config", config)
    assert status == 2
    assert_one_line_error(err, "plugin error", "no_such_module_here")


@pytest.mark.parametrize("argv", [
    ["audit", "--bogus", "x"],
    ["audit"],
    ["audit", "x", "--jobs", "0"],
    ["audit", "x", "--format", "xml"],
    ["frobnicate"],
    ["audit", "nul\0byte"],
    [],
])
def test_usage_errors_exit_2(capsys, argv):
    status, out, err = run_cli(capsys, *argv)
    assert status == 2 and out == ""
    assert_one_line_error(err)


def test_help_exits_0(capsys):
    status, out, _err = run_cli(capsys, "audit", "--help")
    assert status == 0
    assert "--max-image-size" in out and "--jobs" in out
    status, out, _err = run_cli(capsys, "--version")
    assert status == 0
    assert out.strip() == f"importhooks {importlib.metadata.version('importhooks')}"


def test_unusable_work_dir_exits_2(capsys, tmp_path, raw_file):
    config = write_config(tmp_path / "w.toml", tmp_path / "missing")
    status, out, err = run_cli(capsys, "audit", raw_file, "--format", "sarif", "--config", config)
    assert status == 2 and out == ""
    assert "work_dir" in err and "Traceback" not in err
    assert_one_line_error(err)


# --- audit touches nothing -------------------------------------------------------------------------


def test_audit_leaves_no_temp_files_and_inputs_untouched(capsys, tmp_path, workdir, config, raw_file,
                                                         backing_qcow2):
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_mode) for p in (raw_file, backing_qcow2)}
    listing = sorted(os.listdir(tmp_path))
    for output in ("text", "json", "sarif"):
        status, _out, _err = run_cli(capsys, "audit", raw_file, backing_qcow2, "-j", "2", "--format", output,
                                     "--config", config)
        assert status == 1
        assert list(workdir.iterdir()) == []
    assert sorted(os.listdir(tmp_path)) == listing
    for path, (data, mtime, mode) in before.items():
        assert (path.read_bytes(), path.stat().st_mtime_ns, path.stat().st_mode) == (data, mtime, mode)


# --- plugins, info, schema -------------------------------------------------------------------------


SITE_PLUGIN = '''
from importhooks import hookimpl

@hookimpl(tryfirst=True)
def importhooks_pre_validate(context):
    pass
'''


def test_plugins_lists_sources_state_and_hook_order(capsys, monkeypatch, tmp_path, workdir):
    (tmp_path / "cli_site_check.py").write_text(SITE_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    config = write_config(tmp_path / "p.toml", workdir,
                          plugins="enabled = ['cli_site_check']\ndisabled = ['checksums']")
    status, out, _err = run_cli(capsys, "plugins", "--config", config)
    assert status == 0
    assert "  claims: builtin, module importhooks_plugins.policy.claims, enabled" in out
    assert "  checksums: builtin, module importhooks_plugins.policy.checksums, disabled" in out
    assert "  cli_site_check: config, module cli_site_check, enabled" in out
    registry = Pipeline.from_settings(load_settings(config)).registry
    hooks = out.split("hook call order:\n")[1]
    for hook, impls in registry.hook_order().items():
        block = "".join(f"    {n}. {impl}\n" for n, impl in enumerate(impls, 1))
        expected = f"  {hook}:\n{block}" if impls else f"  {hook}: (no implementations)\n"
        assert expected in hooks
    assert "  importhooks_pre_validate:\n    1. cli_site_check [tryfirst]\n    2. claims\n" in hooks
    assert "checksums" not in hooks

    status, out, _err = run_cli(capsys, "plugins", "--format", "json", "--config", config)
    document = json.loads(out)
    assert document["hooks"] == registry.hook_order()
    states = {p["name"]: (p["source"], p["enabled"]) for p in document["plugins"]}
    assert states["cli_site_check"] == ("config", True)
    assert states["checksums"] == ("builtin", False)
    assert set(states) == set(registry.infos)


def test_info_prints_value_discovery(capsys, tmp_path, workdir):
    config = write_config(tmp_path / "i.toml", workdir, "disk_formats = ['raw', 'qcow2']\nmax_image_size = '4GiB'")
    status, out, _err = run_cli(capsys, "info", "--config", config)
    assert status == 0
    document = json.loads(out)
    assert document == import_info(load_settings(config))
    assert document["import-methods"]["value"] == ["glance-direct"]
    assert document["disk-formats"]["value"] == ["raw", "qcow2"]
    assert document["max-image-size"]["value"] == 4 << 30


def test_info_while_halted_offers_no_method(capsys, tmp_path, workdir):
    config = write_config(tmp_path / "h.toml", workdir, "halt = true")
    status, out, _err = run_cli(capsys, "info", "--config", config)
    assert status == 0
    assert json.loads(out)["import-methods"]["value"] == []


def test_schema_prints_the_import_schema(capsys, tmp_path, workdir):
    config = write_config(tmp_path / "s.toml", workdir, "require_os_type = true\nos_types = ['linux']")
    status, out, _err = run_cli(capsys, "schema", "--config", config)
    assert status == 0
    document = json.loads(out)
    assert document == import_schema(load_settings(config))
    assert document["required"] == ["method"]  # os_type may come from the body or the image
    assert document["properties"]["os_type"]["enum"] == ["linux"]
    assert "Required here or on the image" in document["properties"]["os_type"]["description"]


# --- the installed console script ------------------------------------------------------------------


def test_console_script(config, raw_file, backing_qcow2):
    script = Path(sys.executable).with_name("importhooks")
    assert script.exists()
    done = subprocess.run([str(script), "audit", str(raw_file), str(backing_qcow2), "--format", "json",
                           "--config", str(config)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1, done.stderr
    assert [r["verdict"] for r in json_lines(done.stdout)] == ["accept", "reject"]
    assert done.stderr == ""
    done = subprocess.run([str(script), "audit", str(raw_file) + ".missing"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 2
    assert_one_line_error(done.stderr, "no such file")
