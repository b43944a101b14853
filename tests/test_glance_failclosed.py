"""Where Glance fails open, importhooks fails closed; ``importhooks glance-check`` says so before a restart.

A glance-api whose ``[importhooks] config_file`` does not load must fail every import
with a clear message (Glance itself would skip a plugin that cannot load and import
unchecked), and recover without a restart once the file is fixed.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from importhooks.integrations.glance_check import config_files

from . import images
from .glance_harness import GLANCE_BIN, STORE, GlanceServer

UNAVAILABLE = "Image import is unavailable: the image checks could not be loaded. Contact the cloud operator."


@pytest.fixture(scope="module")
def broken_settings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("broken-conf") / "importhooks.toml"
    path.write_text("halt_file = \n")  # not TOML
    return path


@pytest.fixture(scope="module")
def broken_glance(tmp_path_factory: pytest.TempPathFactory, broken_settings: Path) -> Iterator[GlanceServer]:
    server = GlanceServer(tmp_path_factory.mktemp("glance-broken"), importhooks_config=broken_settings).start()
    yield server
    server.stop()


def test_settings_that_do_not_load_fail_every_import_closed_until_fixed(broken_glance, broken_settings, tmp_path):
    path = images.qcow2_image(tmp_path / "benign.qcow2")
    image_id = broken_glance.create_via_import("benign", "qcow2", "bare", path=path)
    image = broken_glance.wait(image_id)

    task = broken_glance.last_task(image_id)
    assert task["status"] == "failure" and task["message"] == UNAVAILABLE
    assert image["status"] == "queued" and image["os_glance_failed_import"] == STORE
    assert broken_glance.stored_files() == []
    assert [name for name in broken_glance.staged_files() if image_id in name] == []
    assert "cannot load the settings or plugins, every import fails" in broken_glance.log_text()

    # Fixed: the next import loads the settings; no restart.
    broken_settings.write_text(f'halt_file = "{tmp_path / "HALT"}"\n')
    broken_glance.stage_and_import(image_id, path)
    image = broken_glance.wait(image_id, count=2)
    assert image["status"] == "active", broken_glance.last_task(image_id)
    assert image["importhooks_partition_table"] == "none"


def glance_check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(GLANCE_BIN / "importhooks"), "glance-check", *args], capture_output=True, text=True,
                          timeout=120)


def write_conf(directory: Path, plugins: str, settings: str) -> Path:
    (directory / "importhooks.toml").write_text(settings)
    conf = directory / "glance-api.conf"
    conf.write_text(f"[DEFAULT]\ndebug = true\n[image_import_opts]\nimage_import_plugins = {plugins}\n"
                    f"[importhooks]\nconfig_file = {directory / 'importhooks.toml'}\n")
    return conf


def test_glance_check_passes_a_conf_that_glance_will_load(tmp_path):
    conf = write_conf(tmp_path, "[image_decompression,importhooks]", f'halt_file = "{tmp_path / "HALT"}"\n')
    done = glance_check("--config-file", str(conf))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["ok   config", "ok   enabled", "ok   entry point",
                                                      "ok   settings", "ok   halt"]
    assert "importhooks.integrations.glance:get_flow" in lines[2]

    (tmp_path / "HALT").touch()  # halted is reported, and Glance still loads the plugin
    done = glance_check("--config-file", str(conf))
    assert done.returncode == 0 and "warn halt: SET" in done.stdout


def test_glance_check_fails_a_conf_without_the_plugin_or_with_broken_settings(tmp_path):
    conf = write_conf(tmp_path, "[image_decompression]", '[plugins]\nenabled = ["no_such_site_plugin"]\n')
    done = glance_check("--config-file", str(conf))
    assert done.returncode == 1
    assert "FAIL enabled: importhooks is not in [image_import_opts] image_import_plugins" in done.stdout
    assert "FAIL settings:" in done.stdout and "no_such_site_plugin" in done.stdout
    assert "ok   entry point" in done.stdout

    # The plugin list in glance-image-import.conf, as Glance reads it, and a settings file that is not TOML.
    (tmp_path / "glance-image-import.conf").write_text("[image_import_opts]\nimage_import_plugins = [importhooks]\n")
    (tmp_path / "importhooks.toml").write_text("halt_file = \n")
    assert config_files([conf])[-1].name == "glance-image-import.conf"
    done = glance_check("--config-file", str(conf))
    assert done.returncode == 1 and "ok   enabled" in done.stdout and "FAIL settings" in done.stdout

    assert glance_check("--config-file", str(tmp_path / "missing.conf")).returncode == 1
    usage = glance_check()
    assert usage.returncode == 2 and "--config-file" in usage.stderr


def test_get_flow_never_raises_and_its_last_resort_flow_fails_the_import():
    # Called without Glance's kwargs, get_flow still returns a flow (taskflow, in Glance's environment);
    # run by a real taskflow engine it fails with UploadException, whose text Glance shows as the task message.
    code = ("import taskflow.engines\n"
            "from importhooks.integrations.glance import UNAVAILABLE, get_flow\n"
            "flow = get_flow()\n"
            "print([task.name for task in flow])\n"
            "try:\n"
            "    taskflow.engines.run(flow, store={'file_path': 'file:///nonexistent/image'})\n"
            "except Exception as exc:\n"
            "    print(type(exc).__name__, str(exc) == UNAVAILABLE)\n")
    done = subprocess.run([str(GLANCE_BIN / "python"), "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["['api_image_import-Importhooks-closed']", "UploadException True"]
    assert "cannot build the import flow" in done.stderr
