"""The distribution ships importhooks and importhooks_plugins, never a bare 'plugins' package."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_wheel_contents(tmp_path: Path):
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".venv", ".git", "docs", "tests", "samples", "build", "*.egg-info", "__pycache__", ".*_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(source)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("importhooks-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"importhooks", "importhooks_plugins", wheel.name.split("-")[0] + "-" +
                    wheel.name.split("-")[1] + ".dist-info"}
    assert "importhooks/py.typed" in names and "importhooks_plugins/py.typed" in names
    # Every module of the source tree is in the wheel (a subpackage missing from pyproject.toml is not).
    sources = {f"importhooks/{p.relative_to(REPO / 'importhooks')}" for p in (REPO / "importhooks").rglob("*.py")}
    sources |= {f"importhooks_plugins/{p.relative_to(REPO / 'plugins')}" for p in (REPO / "plugins").rglob("*.py")}
    assert "importhooks_plugins/formats/disk_format.py" in sources
    assert sources - set(names) == set()
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "importhooks = importhooks.cli.main:main" in entry_points


def test_core_imports_neither_the_server_kit_nor_the_cli():
    """The layout's one rule: importhooks/*.py (the pipeline core) never imports an outer layer."""
    outer = ("server", "cli", "integrations")
    for path in (REPO / "importhooks").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if node.level == 1:
                    targets = [module] if module else [alias.name for alias in node.names]
                elif module.startswith("importhooks."):
                    targets = [module.removeprefix("importhooks.")]
                else:
                    continue
            elif isinstance(node, ast.Import):
                targets = [a.name.removeprefix("importhooks.") for a in node.names if a.name.startswith("importhooks.")]
            else:
                continue
            assert not [t for t in targets if t.split(".")[0] in outer], f"{path.name} imports {targets}"
