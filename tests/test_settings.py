"""Settings: every key validated, errors name the key, sizes and durations parsed."""

from __future__ import annotations

from pathlib import Path

import pytest

from importhooks.errors import ConfigError
from importhooks.settings import Settings, iter_setting_docs, load_settings, settings_from_mapping
from importhooks.units import format_size, parse_duration, parse_size


def test_load_from_toml(tmp_path: Path):
    config = tmp_path / "importhooks.toml"
    config.write_text(
        'max_image_size = "4GiB"\nos_types = ["linux"]\nrequire_os_type = true\n'
        '[timeouts]\ninspect = "5m"\n[plugins]\ndisabled = ["notify_log"]\n'
    )
    settings = load_settings(config)
    assert settings.max_image_size == 4 << 30
    assert settings.os_types == ("linux",)
    assert settings.require_os_type is True
    assert settings.timeouts.inspect == 300.0
    assert settings.timeouts.finalize == Settings().timeouts.finalize
    assert settings.plugins.disabled == ("notify_log",)


@pytest.mark.parametrize(("data", "key"), [
    ({"max_image_sise": "1GiB"}, "max_image_sise"),
    ({"max_image_size": "big"}, "max_image_size"),
    ({"max_image_size": -1}, "max_image_size"),
    ({"require_os_type": "yes"}, "require_os_type"),
    ({"os_types": "linux"}, "os_types"),
    ({"disk_formats": ["qcow3"]}, "disk_formats"),
    ({"container_formats": ["rar"]}, "container_formats"),
    ({"hashing_algorithm": "crc32"}, "hashing_algorithm"),
    ({"max_read_passes": 1.5}, "max_read_passes"),
    ({"timeouts": {"inspect": "soon"}}, "timeouts.inspect"),
    ({"timeouts": {"inspect": 0}}, "timeouts.inspect"),
    ({"timeouts": {"unpack": 5}}, "timeouts.unpack"),
    ({"timeouts": 5}, "timeouts"),
    ({"plugins": {"disabled": "claims"}}, "plugins.disabled"),
    ({"plugins": {"entry_points": 1}}, "plugins.entry_points"),
    ({"plugin": {"x": 1}}, "plugin"),
])
def test_bad_keys_and_values_name_the_key(data, key):
    with pytest.raises(ConfigError) as info:
        settings_from_mapping(data)
    assert info.value.key == key
    assert str(info.value).startswith(f"{key}: ")


def test_missing_and_broken_files(tmp_path: Path):
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(tmp_path / "absent.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("max_image_size = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(broken)


def test_every_setting_is_documented():
    rows = iter_setting_docs()
    assert len(rows) > 20
    assert all(doc and doc.strip() for _, _, doc in rows)
    keys = {key for key, _, _ in rows}
    assert {"max_image_size", "max_upload_bytes", "max_upload_time", "os_types", "require_os_type",
            "timeouts.inspect", "plugins.disabled", "halt_file"} <= keys


@pytest.mark.parametrize(("text", "value"), [
    ("4GiB", 4 << 30), ("512MiB", 512 << 20), ("1TiB", 1 << 40), ("1024", 1024), (2048, 2048),
    ("1.5KiB", 1536), ("10 MB", 10_000_000),
])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "4 GiBs", "-1", "1e9", True, None, 1.5, "GiB"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize(("text", "value"), [("30s", 30), ("5m", 300), ("1h", 3600), ("250ms", 0.25), (2, 2.0)])
def test_parse_duration(text, value):
    assert parse_duration(text) == value


def test_format_size():
    assert format_size(1 << 40) == "1.0 TiB"
    assert format_size(512) == "512 B"
