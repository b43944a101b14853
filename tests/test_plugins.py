"""Plugin loading: one registration call, collisions, validation, no side effects at import."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from importhooks import FindingCode, ImportContext, PluginLoadError, PluginOption, PluginOptions, Settings, hookimpl
from importhooks.errors import ConfigError
from importhooks.pipeline import Pipeline
from importhooks.plugins import DEFAULT_PLUGINS, build_registry
from importhooks.settings import PluginSettings, settings_from_mapping


def test_builtins_register_through_the_same_call_as_site_plugins(settings):
    registry = build_registry(settings)
    names = {name for name, info in registry.infos.items() if info.source == "builtin"}
    assert names == {module.rsplit(".", 1)[1] for module in DEFAULT_PLUGINS}
    assert registry.infos["claims"].module == "importhooks_plugins.policy.claims"
    assert registry.plugin_object("claims") is sys.modules["importhooks_plugins.policy.claims"]


def test_site_plugin_named_like_a_builtin_is_an_error(settings):
    with pytest.raises(PluginLoadError, match=r"'claims'.*collides"):
        build_registry(settings, [("claims", types.SimpleNamespace())])


def test_two_site_plugins_with_one_name_is_an_error(settings):
    with pytest.raises(PluginLoadError, match="collides"):
        build_registry(settings, [("x", types.SimpleNamespace()), ("x", types.SimpleNamespace())])


def test_unknown_hook_is_refused(settings):
    class Typo:
        @hookimpl
        def importhooks_inspekt(self, context: ImportContext) -> None:
            pass

    with pytest.raises(PluginLoadError, match="importhooks_inspekt"):
        build_registry(settings, [("typo", Typo())])


def test_hookimpl_with_wrong_argument_is_refused(settings):
    class Wrong:
        @hookimpl
        def importhooks_inspect(self, ctx: ImportContext) -> None:
            pass

    with pytest.raises(PluginLoadError, match="wrong"):
        build_registry(settings, [("wrong", Wrong())])


def test_configured_module_that_does_not_import(settings):
    bad = settings.replace(plugins=PluginSettings(entry_points=False, enabled=("no_such_module_xyz",)))
    with pytest.raises(PluginLoadError, match="no_such_module_xyz"):
        build_registry(bad)


def test_configured_module_is_registered(settings):
    registry = build_registry(settings.replace(plugins=PluginSettings(entry_points=False,
                                                                      enabled=("tests.plugin_kit",))))
    assert registry.infos["tests.plugin_kit"].source == "config"


def test_order_and_disabled_must_name_loaded_plugins(settings):
    for key, value in (("order", ("nope",)), ("disabled", ("nope",))):
        bad = settings.replace(plugins=PluginSettings(entry_points=False, **{key: value}))
        with pytest.raises(ConfigError) as info:
            Pipeline.from_settings(bad)
        assert info.value.key == f"plugins.{key}"


def test_hook_order_lists_call_order(settings):
    order = build_registry(settings).hook_order()
    inspect = order["importhooks_inspect"]
    assert inspect[:2] == ["content_type [tryfirst]", "disk_format [tryfirst]"]
    builtin_order = [m.rsplit(".", 1)[1] for m in DEFAULT_PLUGINS]
    plain = [name for name in inspect[2:] if "[" not in name]
    late = [name.split(" ")[0] for name in inspect[2:] if name.endswith("[trylast]")]
    assert inspect[2:] == plain + [f"{name} [trylast]" for name in late]  # groups in order
    assert plain == sorted(plain, key=builtin_order.index) and late == sorted(late, key=builtin_order.index)
    assert "qemu_img" in late
    assert order["importhooks_pre_validate"] == ["claims", "size_limits", "properties"]


def test_duplicate_finding_code_declared_differently_is_an_error(settings):
    class A:
        @hookimpl
        def importhooks_finding_codes(self) -> list[FindingCode]:
            return [FindingCode("dup.code", "one", "")]

    class B:
        @hookimpl
        def importhooks_finding_codes(self) -> list[FindingCode]:
            return [FindingCode("dup.code", "two", "")]

    with pytest.raises(ConfigError, match=r"dup\.code"):
        Pipeline.from_settings(settings, extra_plugins=[("a", A()), ("b", B())])


class Options:
    @hookimpl
    def importhooks_plugin_options(self) -> PluginOptions:
        return PluginOptions("opt", (PluginOption("limit", 10, "A number."),
                                     PluginOption("cap", 1 << 30, "A size.", size=True),
                                     PluginOption("names", ("a",), "Names.")))


def test_plugin_options_are_validated_and_resolved(settings):
    good = settings_from_mapping({"plugin": {"opt": {"limit": 3, "cap": "2GiB"}}})
    pipeline = Pipeline.from_settings(good.replace(plugins=PluginSettings(entry_points=False)),
                                      extra_plugins=[("opt", Options())])
    assert pipeline.options["opt"] == {"limit": 3, "cap": 2 << 30, "names": ("a",)}


@pytest.mark.parametrize(("table", "key"), [
    ({"opt": {"limti": 3}}, "plugin.opt.limti"),
    ({"opt": {"limit": "three"}}, "plugin.opt.limit"),
    ({"opt": {"cap": "lots"}}, "plugin.opt.cap"),
    ({"opt": {"names": "a"}}, "plugin.opt.names"),
    ({"other": {"x": 1}}, "plugin.other"),
])
def test_bad_plugin_options_name_the_key(table, key):
    settings = settings_from_mapping({"plugin": table, "plugins": {"entry_points": False}})
    with pytest.raises(ConfigError) as info:
        Pipeline.from_settings(settings, extra_plugins=[("opt", Options())])
    assert info.value.key == key


def test_importing_creates_no_plugin_manager():
    code = (
        "import gc, pluggy, importhooks, importhooks.cli.main, importhooks_plugins.policy.claims\n"
        "print(sum(isinstance(o, pluggy.PluginManager) for o in gc.get_objects()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "0"


def test_settings_default_is_usable():
    assert Settings().max_image_size == 1 << 40


def test_option_with_its_own_parser():
    def parse_even(value: object) -> int:
        if not isinstance(value, int) or value % 2:
            raise ValueError(f"expected an even number, got {value!r}")
        return value

    spec = PluginOptions("even", (PluginOption("n", 2, "An even number.", parse=parse_even),))
    assert spec.resolve({"n": 4}) == {"n": 4}
    with pytest.raises(ConfigError) as info:
        spec.resolve({"n": 3})
    assert info.value.key == "plugin.even.n" and "even number" in info.value.problem


def test_disabling_a_plugin_keeps_its_table_valid():
    settings = settings_from_mapping({"plugin": {"opt": {"limit": 3}},
                                      "plugins": {"entry_points": False, "disabled": ["opt"]}})
    pipeline = Pipeline.from_settings(settings, extra_plugins=[("opt", Options())])
    assert "opt" not in pipeline.options and pipeline.registry.infos["opt"].enabled is False


#: Dependencies a built-in plugin loads in the function that uses them, never at registration.
HEAVY_MODULES = ("oslo_utils.imageutils", "oslo_utils.imageutils.format_inspector", "oslo_utils.strutils",
                 "oslo_concurrency.processutils", "libarchive", "zstandard", "magic", "defusedxml", "cryptography")
_LAZY_PROBE = """
import json, subprocess, sys
from pathlib import Path
import importhooks
from importhooks import Claims, ImportRequest, Pipeline, load_settings
heavy = {heavy!r}
def loaded():
    return sorted(m for m in heavy if m in sys.modules)
pipeline = Pipeline.from_settings(load_settings())
after_build = loaded()
builtins = sorted(n for n, i in pipeline.registry.infos.items() if i.source == "builtin" and i.enabled)
result = pipeline.run(ImportRequest(Path(sys.argv[1]), Claims(disk_format="qcow2", container_format="bare")))
print(json.dumps({{"after_build": after_build, "after_run": loaded(), "builtins": builtins,
                  "verdict": result.verdict.value}}))
"""


def test_building_a_pipeline_loads_no_heavy_dependency(tmp_path):
    """A fresh process: ``Pipeline.from_settings`` registers every built-in plugin but loads none of the
    heavy dependencies; auditing a qcow2 then loads what that audit uses (and accepts it)."""
    image = tmp_path / "empty.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"], check=True)
    code = _LAZY_PROBE.format(heavy=HEAVY_MODULES)
    out = subprocess.run([sys.executable, "-c", code, str(image)], check=True, capture_output=True, text=True)
    report = json.loads(out.stdout)
    assert report["after_build"] == []
    assert report["builtins"] == sorted(module.rsplit(".", 1)[1] for module in DEFAULT_PLUGINS)
    assert report["verdict"] == "accept"
    assert {"oslo_utils.imageutils", "magic"} <= set(report["after_run"])  # every audit detects and sniffs
    assert not {"libarchive", "zstandard", "defusedxml"} & set(report["after_run"])  # no archive, no zstd, no OVF


def test_zstd_magic_is_zstandards_frame_header():
    """compression.py spells the zstd magic out so that zstandard loads only to decompress."""
    import zstandard
    from importhooks_plugins.containers import compression

    assert compression.MAGIC["zstd"] == zstandard.FRAME_HEADER


def test_plugins_command_verbose_lists_every_plugin_option(tmp_path):
    """``importhooks plugins -v`` shows each plugin's options, the value in effect and its default."""
    config = tmp_path / "importhooks.toml"
    config.write_text('[plugins]\nentry_points = false\n[plugin.disk_format]\nchunk_size = 4096\n')
    command = [str(Path(sys.executable).with_name("importhooks")), "plugins", "-v", "--config", str(config)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    assert "    plugin.disk_format.chunk_size = 4096 (default 1048576): Bytes read per step" in out
    registry = build_registry(Settings(plugins=PluginSettings(entry_points=False)))
    declared = registry.declared_options()
    assert {"disk_format", "qcow2", "compression", "os_type"} <= set(declared)
    for spec in declared.values():
        for option in spec.options:
            assert f"    plugin.{spec.section}.{option.name} = " in out, option.name
    quiet = subprocess.run(command[:2] + command[3:], check=True, capture_output=True, text=True).stdout
    assert "plugin.disk_format.chunk_size" not in quiet
    as_json = subprocess.run([*command, "--format", "json"], check=True, capture_output=True, text=True).stdout
    (disk_format,) = [p for p in json.loads(as_json)["plugins"] if p["name"] == "disk_format"]
    assert disk_format["options"][0] == {"key": "plugin.disk_format.chunk_size", "value": "4096",
                                         "default": "1048576", "doc": declared["disk_format"].options[0].doc}
