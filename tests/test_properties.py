"""Protected and injected properties (the ``properties`` plugin) and the os_type policy of ``claims``."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

import pytest

from importhooks import Claims, ConfigError, ImportRequest, Pipeline, Requester, Settings, Verdict
from importhooks.settings import settings_from_mapping

from .helpers import codes


def run(settings: Settings, path: Path, roles: tuple[str, ...] = ("member",), **claims: object):
    properties = claims.pop("properties", {})
    request = ImportRequest(path=path, claims=Claims(properties=MappingProxyType(dict(properties)), **claims),
                            requester=Requester(user="u", project="p", roles=roles))
    return Pipeline.from_settings(settings).run(request)


@pytest.mark.parametrize("name", ["os_type", "importhooks_os_type_detected", "importhooks_filesystems"])
def test_a_request_setting_a_protected_property_is_rejected_before_reading(settings, raw_file, name):
    result = run(settings, raw_file, properties={name: "linux", "description": "mine"})
    assert result.verdict is Verdict.REJECT and codes(result) == ["properties.protected"]
    finding = result.findings[0]
    assert finding.stage == "pre_validate" and "os_type, importhooks_*" in finding.message
    assert ("os_type field" in finding.message) is (name == "os_type")
    assert name in (finding.detail or "")
    assert result.layers[0].facts == {}  # no data was read


def test_unprotected_properties_pass(settings, raw_file):
    result = run(settings, raw_file, properties={"description": "mine", "hw_disk_bus": "virtio"})
    assert result.verdict is Verdict.ACCEPT, result.findings


def test_operators_choose_what_is_protected(settings, raw_file):
    custom = settings.replace(protected_properties=("os_type", "hw_*"))
    assert custom.is_protected("hw_disk_bus") and custom.is_protected("os_type")
    assert not custom.is_protected("importhooks_filesystems") and not custom.is_protected("os_type_x")
    assert codes(run(custom, raw_file, properties={"hw_disk_bus": "ide"})) == ["properties.protected"]


@pytest.mark.parametrize("bad", [["a*b"], [""], "os_type", [1]])
def test_protected_patterns_are_validated(bad):
    with pytest.raises(ConfigError, match="protected_properties"):
        settings_from_mapping({"protected_properties": bad})


def inject(settings: Settings, **options: object) -> Settings:
    return settings.replace(plugin={"properties": {"inject": {"hw_disk_bus": "scsi", "hw_scsi_model": "virtio-scsi"},
                                                   **options}})


def test_injected_properties_are_set_on_every_import(settings, raw_file):
    result = run(inject(settings), raw_file, properties={"hw_disk_bus": "ide"})
    assert result.verdict is Verdict.ACCEPT
    assert result.properties["hw_disk_bus"] == "scsi" and result.properties["hw_scsi_model"] == "virtio-scsi"


@pytest.mark.parametrize(("roles", "skip_roles", "injected"), [
    (("admin",), None, False),
    (("member", "admin"), None, False),
    (("member",), None, True),
    (("member",), ["member"], False),
    (("admin",), [], True),
])
def test_injection_skips_configured_roles(settings, raw_file, roles, skip_roles, injected):
    options = {} if skip_roles is None else {"skip_roles": skip_roles}
    result = run(inject(settings, **options), raw_file, roles=roles)
    assert ("hw_disk_bus" in result.properties) is injected


@pytest.mark.parametrize("bad", [{"hw_disk_bus": 1}, ["hw_disk_bus"], {"": "x"}])
def test_inject_table_is_validated(settings, bad):
    with pytest.raises(ConfigError, match=r"plugin\.properties\.inject"):
        Pipeline.from_settings(settings.replace(plugin={"properties": {"inject": bad}}))


def test_injecting_a_property_a_plugin_derives_conflicts(settings, tmp_path):
    """Injecting os_type over a verified os_type is a configuration error that shows on the first import."""
    from . import guest_images as gi

    disk = tmp_path / "l.raw"
    gi.partitioned_disk(disk, "dos", ["ext4"])
    wrong = settings.replace(plugin={"properties": {"inject": {"os_type": "windows"}}})
    assert "pipeline.property_conflict" in codes(run(wrong, disk, os_type="linux"))


def test_os_type_policy_lists_the_allowed_values(settings, raw_file):
    strict = settings.replace(os_types=("linux", "windows", "freebsd"), require_os_type=True)
    missing = run(strict, raw_file)
    assert codes(missing) == ["claims.os_type_missing"] and "linux, windows, freebsd" in missing.user_message
    bad = run(strict, raw_file, os_type="solaris")
    assert codes(bad) == ["claims.os_type_not_allowed"] and "linux, windows, freebsd" in bad.user_message
    assert "solaris" not in bad.user_message
    assert run(strict, raw_file, os_type="freebsd").verdict is Verdict.ACCEPT
