"""Every ``[plugin.SECTION] with its defaults`` block in the docs is exactly the plugin's defaults."""

from __future__ import annotations

import importlib
import re

import pytest

from importhooks.plugins import DEFAULT_PLUGINS
from importhooks.settings import PluginOptions

from .helpers import DOCS, documented_options


def _specs() -> dict[str, PluginOptions]:
    specs = {}
    for name in DEFAULT_PLUGINS:
        declare = getattr(importlib.import_module(name), "importhooks_plugin_options", None)
        if declare is not None:
            spec = declare()
            specs[spec.section] = spec
    return specs


SPECS = _specs()
BLOCKS = sorted((page.relative_to(DOCS).as_posix(), section) for page in DOCS.rglob("*.rst")
                if "_build" not in page.parts
                for section in re.findall(r":caption: \[plugin\.(\w+)\] with its defaults", page.read_text("utf-8")))


def test_the_docs_show_defaults_blocks():
    assert len(BLOCKS) >= 9 and {section for _page, section in BLOCKS} <= set(SPECS)


@pytest.mark.parametrize(("page", "section"), BLOCKS, ids=[f"{p}:{s}" for p, s in BLOCKS])
def test_documented_block_is_the_defaults(page: str, section: str):
    documented = documented_options(page, section)["plugin"][section]
    spec = SPECS[section]
    assert set(documented) == {option.name for option in spec.options}
    assert spec.resolve(documented) == spec.resolve({})
