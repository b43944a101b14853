"""The distribution ships importhooks and importhooks_plugins, never a bare 'plugins' package."""

from __future__ import annotations

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
    assert "importhooks_plugins/disk_format.py" in names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "importhooks = importhooks.cli:main" in entry_points
