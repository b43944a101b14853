"""The example site plugin (examples/site_plugin), installed for real and found through its entry point.

The package is built and installed with pip into a private directory once per
session; each test puts that directory on ``sys.path`` (or ``PYTHONPATH`` for a
subprocess), exactly as a deployer's ``pip install`` into the service's
environment would make it visible. Nothing is mocked: pip builds the wheel,
importlib.metadata finds the entry point, the pipeline loads it and runs real
imports of real files.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from importhooks import ConfigError, Pipeline, Settings, Severity, Verdict
from importhooks.request import Claims, ImportRequest, Requester
from importhooks.result import ImportResult
from importhooks.settings import PluginSettings, settings_from_mapping

from . import images

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "site_plugin"
DISTRIBUTION = "importhooks-site-policy"
PLUGIN = "site_policy"
MiB = 1 << 20


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip install --no-deps --no-build-isolation --target DIR`` of a copy of the example; returns DIR.

    The copy keeps setuptools' in-tree ``build/`` and ``*.egg-info`` out of the repository.
    """
    base = tmp_path_factory.mktemp("site_plugin")
    source, target = base / "source", base / "target"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__"))
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
               "--disable-pip-version-check", "--target", str(target), str(source)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        pytest.fail(f"pip could not install the example site plugin (exit {done.returncode}); "
                    "--no-build-isolation needs setuptools>=70.1 or the 'wheel' package in the venv.\n"
                    f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return target


@pytest.fixture
def site_path(installed: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Make the installed plugin visible to this process, as if pip had installed it into the venv."""
    monkeypatch.syspath_prepend(str(installed))
    importlib.invalidate_caches()
    return installed


def _settings(workdir: Path, *, plugins: PluginSettings | None = None, **options: Any) -> Settings:
    return Settings(work_dir=workdir, plugins=plugins or PluginSettings(),
                    plugin={PLUGIN: options} if options else {})


def _run(pipeline: Pipeline, path: Path, *, name: str | None = "ubuntu-24.04", disk_format: str | None = "raw",
         properties: dict[str, str] | None = None, project: str | None = "proj-a",
         roles: tuple[str, ...] = ("member",)) -> ImportResult:
    props = {"name": name} if name is not None else {}
    props.update(properties or {})
    claims = Claims(disk_format=disk_format, container_format="bare", properties=props)
    return pipeline.run(ImportRequest(path, claims, Requester("alice", project, roles)))


def _ours(result: ImportResult) -> list[Any]:
    return [f for f in result.findings if f.code.startswith(f"{PLUGIN}.")]


# --- the installed package ----------------------------------------------------------------------------


def test_pip_install_registers_the_entry_point(site_path):
    (ep,) = [ep for ep in importlib.metadata.entry_points(group="importhooks.plugins") if ep.name == PLUGIN]
    assert ep.value == "importhooks_site_policy"
    assert ep.dist is not None
    assert ep.dist.name == DISTRIBUTION
    assert ep.dist.version == "0.1.0"
    spec = importlib.util.find_spec("importhooks_site_policy")
    assert spec is not None and spec.origin is not None
    assert Path(spec.origin).is_relative_to(site_path), "imported from the install, not the source tree"
    assert (site_path / "importhooks_site_policy" / "py.typed").is_file()


def test_pipeline_loads_it_from_the_entry_point(site_path, workdir):
    pipeline = Pipeline.from_settings(_settings(workdir, max_virtual_size="2GiB"))
    info = pipeline.registry.infos[PLUGIN]
    assert (info.source, info.distribution, info.version, info.enabled) == ("entry point", DISTRIBUTION, "0.1.0", True)
    assert info.module == "importhooks_site_policy"
    assert info.file is not None and Path(info.file).is_relative_to(site_path)
    order = pipeline.registry.hook_order()
    inspect_order = order["importhooks_inspect"]
    assert inspect_order[-1] == f"{PLUGIN} [trylast]"
    assert inspect_order.index("disk_format [tryfirst]") < inspect_order.index(f"{PLUGIN} [trylast]")
    assert PLUGIN in order["importhooks_pre_validate"]
    assert PLUGIN in order["importhooks_finalize"]
    declared = {code for code in pipeline.catalog if code.startswith(f"{PLUGIN}.")}
    assert declared >= {f"{PLUGIN}.{c}" for c in ("name_too_long", "reserved_property", "role_not_allowed",
                                                    "format_not_allowed_for_project",
                                                    "virtual_size_over_project_cap")}
    assert all(pipeline.catalog[c].help for c in declared)
    assert pipeline.options[PLUGIN]["max_virtual_size"] == 2 << 30
    assert pipeline.options[PLUGIN]["reserved_property_prefixes"] == ("os_glance_", "os_hash_")


# --- its checks ---------------------------------------------------------------------------------------

_STRICT: dict[str, Any] = {
    "importer_roles": ["member", "image_importer"],
    "name_max_length": 16,
    "name_pattern": "[a-z0-9][a-z0-9.-]*",
    "project_disk_formats": {"proj-a": ["raw", "qcow2"], "proj-iso": ["iso"]},
}


@pytest.mark.parametrize(
    ("request_args", "code"),
    [
        ({"name": "a-very-long-image-name"}, "name_too_long"),
        ({"name": "Ubuntu 24.04!"}, "name_not_allowed"),
        ({"properties": {"os_glance_import_method": "web-download"}}, "reserved_property"),
        ({"properties": {"OS_HASH_VALUE": "0" * 128}}, "reserved_property"),
        ({"project": "proj-iso"}, "format_not_allowed_for_project"),
        ({"roles": ("reader",)}, "role_not_allowed"),
    ],
)
def test_violations_are_rejected_in_pre_validate(site_path, workdir, raw_file, request_args, code):
    pipeline = Pipeline.from_settings(_settings(workdir, **_STRICT))
    result = _run(pipeline, raw_file, **request_args)
    assert result.verdict is Verdict.REJECT
    ours = _ours(result)
    assert [f.code for f in ours] == [f"{PLUGIN}.{code}"]
    (finding,) = ours
    assert (finding.plugin, finding.stage, finding.severity) == (PLUGIN, "pre_validate", Severity.ERROR)
    assert finding.detail and "alice" in finding.detail and "alice" not in finding.message
    assert "disk_format" not in result.detected, "the run must stop before any data is read"


def test_every_violation_is_reported_at_once(site_path, workdir, raw_file):
    pipeline = Pipeline.from_settings(_settings(workdir, **_STRICT))
    result = _run(pipeline, raw_file, name="X" * 40, properties={"os_glance_stores": "a"}, project="proj-iso",
                  roles=("reader",))
    assert {f.code for f in _ours(result)} == {f"{PLUGIN}.{c}" for c in (
        "name_too_long", "name_not_allowed", "reserved_property", "format_not_allowed_for_project",
        "role_not_allowed")}
    assert result.verdict is Verdict.REJECT


def test_compliant_request_is_accepted(site_path, workdir, raw_file):
    pipeline = Pipeline.from_settings(_settings(workdir, max_virtual_size="1MiB", **_STRICT))
    result = _run(pipeline, raw_file, properties={"os_distro": "ubuntu"}, roles=("Image_Importer",))
    assert result.verdict is Verdict.ACCEPT, result.findings
    assert _ours(result) == []
    assert result.detected["disk_format"] == "raw"
    assert result.detected["virtual_size"] == MiB
    assert list(workdir.iterdir()) == []


@pytest.mark.parametrize(("project", "accepted"), [("proj-a", False), (None, False), ("big", True), ("free", True)])
def test_virtual_size_cap_per_project(site_path, workdir, tmp_path, project, accepted):
    disk = images.raw_image(tmp_path / "one-mib.raw", MiB)
    pipeline = Pipeline.from_settings(_settings(workdir, max_virtual_size="512KiB",
                                                project_max_virtual_size={"big": "2MiB", "free": 0}))
    result = _run(pipeline, disk, project=project)
    assert result.accepted is accepted, result.findings
    if not accepted:
        (finding,) = _ours(result)
        assert finding.code == f"{PLUGIN}.virtual_size_over_project_cap"
        assert (finding.stage, finding.plugin) == ("inspect", PLUGIN)
        assert "512.0 KiB" in finding.message
        assert finding.detail is not None and str(MiB) in finding.detail
        assert result.detected["virtual_size"] == MiB, "the cap reads disk_format's fact"


def test_cap_without_a_virtual_size_fact_fails_closed(site_path, workdir, raw_file):
    plugins = PluginSettings(disabled=("disk_format",))
    pipeline = Pipeline.from_settings(_settings(workdir, plugins=plugins, max_virtual_size="1GiB"))
    result = _run(pipeline, raw_file)
    assert result.verdict is Verdict.REJECT
    assert [(f.code, f.stage) for f in _ours(result)] == [(f"{PLUGIN}.virtual_size_unknown", "inspect")]


@pytest.mark.parametrize(("project", "accepted"), [("proj-a", False), ("proj-raw", True), (None, False)])
def test_detected_format_is_checked_when_nothing_is_claimed(site_path, workdir, raw_file, project, accepted):
    pipeline = Pipeline.from_settings(_settings(workdir, project_disk_formats={"*": ["qcow2"], "proj-raw": ["raw"]}))
    result = _run(pipeline, raw_file, disk_format=None, project=project)
    assert result.accepted is accepted, result.findings
    if not accepted:
        (finding,) = _ours(result)
        assert (finding.code, finding.stage) == (f"{PLUGIN}.format_not_allowed_for_project", "finalize")
        assert finding.detail is not None and "detected disk format 'raw'" in finding.detail
        assert "qcow2" in finding.message


def test_disabled_by_name_it_does_not_run(site_path, workdir, raw_file):
    violating = {"os_glance_import_method": "glance-direct"}
    enabled = Pipeline.from_settings(_settings(workdir))
    assert [f.code for f in _ours(_run(enabled, raw_file, properties=violating))] == [f"{PLUGIN}.reserved_property"]

    disabled = Pipeline.from_settings(_settings(workdir, plugins=PluginSettings(disabled=(PLUGIN,))))
    result = _run(disabled, raw_file, properties=violating)
    assert result.verdict is Verdict.ACCEPT, result.findings
    assert _ours(result) == []
    info = disabled.registry.infos[PLUGIN]
    assert (info.enabled, info.source, info.distribution) == (False, "entry point", DISTRIBUTION)
    assert all(PLUGIN not in impl for impls in disabled.registry.hook_order().values() for impl in impls)
    assert f"{PLUGIN}.reserved_property" not in disabled.catalog


# --- configuration ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"name_max_length": "long"}, "name_max_length"),
        ({"max_virtual_size": "lots"}, "max_virtual_size"),
        ({"importer_roles": "admin"}, "importer_roles"),
        ({"no_such_option": 1}, "no_such_option"),
        ({"name_pattern": "([a-z"}, "name_pattern"),
        ({"reserved_property_prefixes": ["os_glance_", ""]}, "reserved_property_prefixes"),
        ({"project_disk_formats": ["raw"]}, "project_disk_formats"),
        ({"project_disk_formats": {"proj-a": ["qcow"]}}, "project_disk_formats.proj-a"),
        ({"project_disk_formats": {"proj-a": "raw"}}, "project_disk_formats.proj-a"),
        ({"project_max_virtual_size": {"proj-a": "huge"}}, "project_max_virtual_size.proj-a"),
    ],
)
def test_bad_option_is_a_config_error_naming_the_key(site_path, workdir, options, key):
    with pytest.raises(ConfigError) as caught:
        Pipeline.from_settings(_settings(workdir, **options))
    assert caught.value.key == f"plugin.{PLUGIN}.{key}"
    assert str(caught.value).startswith(f"plugin.{PLUGIN}.{key}: ")


def test_readme_configuration_example_loads_and_applies(site_path, workdir, raw_file):
    readme = (EXAMPLE / "README.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", readme, flags=re.S)
    (example,) = [b for b in blocks if b.startswith(f"[plugin.{PLUGIN}]")]
    data = tomllib.loads(example)
    settings = settings_from_mapping({**data, "work_dir": str(workdir)})
    pipeline = Pipeline.from_settings(settings)
    assert pipeline.options[PLUGIN]["project_max_virtual_size"] == {
        "4f0b1f5e1c8d4b6a9d2e7f3a1b2c3d4e": "2TiB", "0a1b2c3d4e5f60718293a4b5c6d7e8f9": 0}
    assert _run(pipeline, raw_file, project="4f0b1f5e1c8d4b6a9d2e7f3a1b2c3d4e").accepted
    rejected = _run(pipeline, raw_file, properties={"site_owner": "me"}, roles=("reader",))
    assert {f.code for f in _ours(rejected)} == {f"{PLUGIN}.reserved_property", f"{PLUGIN}.role_not_allowed"}


# --- the command line ---------------------------------------------------------------------------------


def _plugins_command() -> list[str]:
    script = Path(sys.executable).with_name("importhooks")
    return [str(script), "plugins"] if script.exists() else [sys.executable, "-m", "importhooks.cli.main", "plugins"]


def test_cli_lists_it_as_an_entry_point_with_its_distribution(installed, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    with_plugin = subprocess.run(_plugins_command(), capture_output=True, text=True, timeout=120, cwd=tmp_path,
                                 env={**env, "PYTHONPATH": str(installed)})
    assert with_plugin.returncode == 0, with_plugin.stderr
    # The plugin list has one line per plugin: "NAME: SOURCE, module M from DISTRIBUTION VERSION, enabled".
    (line,) = [line for line in with_plugin.stdout.splitlines() if re.match(rf"\s*{PLUGIN}:", line)]
    assert "entry point" in line
    assert DISTRIBUTION in line
    assert re.search(r"\bclaims\b", with_plugin.stdout), "built-ins are listed too"

    without = subprocess.run(_plugins_command(), capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert without.returncode == 0, without.stderr
    assert not re.search(rf"\b{PLUGIN}\b", without.stdout), "only the install makes it visible"
