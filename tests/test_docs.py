"""The documentation: it builds without warnings, its generated tables match the code,
every hookspec is documented well enough to implement, and its examples work."""

from __future__ import annotations

import inspect
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from importhooks import codes, hookspecs
from importhooks.pipeline import Pipeline
from importhooks.plugins import DEFAULT_PLUGINS, build_registry
from importhooks.settings import STAGES, PluginSettings, Settings, iter_setting_docs, settings_from_mapping

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

HOOKSPECS = sorted(
    name for name, obj in vars(hookspecs).items()
    if name.startswith("importhooks_") and inspect.isfunction(obj)
)


# -- helpers -----------------------------------------------------------------------


def _sphinx_build() -> list[str]:
    script = Path(sys.executable).with_name("sphinx-build")
    if script.exists():
        return [str(script)]
    found = shutil.which("sphinx-build")
    return [found] if found else [sys.executable, "-m", "sphinx"]


_DIRECTIVE = re.compile(r"^(?P<indent> *)\.\. code-block:: *(?P<language>\S+)\s*$")
_OPTION = re.compile(r"^ +:(?P<name>[\w-]+):(?: +(?P<value>.*))?$")


def code_blocks(page: str, language: str) -> list[tuple[dict[str, str], str]]:
    """``(options, dedented text)`` of each ``.. code-block:: LANGUAGE`` in ``docs/PAGE``."""
    lines = (DOCS / page).read_text(encoding="utf-8").splitlines()
    blocks: list[tuple[dict[str, str], str]] = []
    i = 0
    while i < len(lines):
        match = _DIRECTIVE.match(lines[i])
        i += 1
        if not match or match["language"] != language:
            continue
        indent = len(match["indent"])
        options: dict[str, str] = {}
        while i < len(lines) and (option := _OPTION.match(lines[i])):
            options[option["name"]] = (option["value"] or "").strip()
            i += 1
        body: list[str] = []
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
            body.append(lines[i])
            i += 1
        blocks.append((options, textwrap.dedent("\n".join(body)).strip("\n") + "\n"))
    return blocks


def block(page: str, language: str, caption: str) -> str:
    found = [text for options, text in code_blocks(page, language) if options.get("caption") == caption]
    assert len(found) == 1, f"{page}: expected one {language} block captioned {caption!r}, found {len(found)}"
    return found[0]


def builtin_codes() -> dict[str, str]:
    """Every code the framework and the built-in plugins declare, with its declarer."""
    declared = {code.code: "framework" for code in codes.FRAMEWORK_CODES}
    registry = build_registry(Settings(plugins=PluginSettings(entry_points=False)))
    for impl in registry.hook.importhooks_finding_codes.get_hookimpls():
        for code in impl.function() or ():
            declared[code.code] = impl.plugin_name
    return declared


# -- (a) the build -------------------------------------------------------------------


@pytest.fixture(scope="module")
def html(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the HTML docs once, warnings as errors, into a temporary directory."""
    out = tmp_path_factory.mktemp("docs")
    proc = subprocess.run(
        [*_sphinx_build(), "-W", "--keep-going", "--no-color", "-q", "-b", "html", "-d", str(out / "doctrees"),
         str(DOCS), str(out / "html")],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == 0, f"sphinx-build failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    assert "WARNING" not in proc.stderr, proc.stderr
    return out / "html"


def page(html: Path, name: str) -> str:
    path = html / f"{name}.html"
    assert path.is_file(), f"{name}.html was not built"
    return path.read_text(encoding="utf-8")


def test_docs_build_every_page(html: Path) -> None:
    for name in ("index", "hooks", "site_plugins", "settings", "cli", "codes", "api"):
        text = page(html, name)
        assert "</html>" in text


def test_codes_table_lists_every_builtin_code(html: Path) -> None:
    text = page(html, "codes")
    assert "qcow2.backing_file" in text
    assert "pipeline.plugin_failed" in text
    declared = builtin_codes()
    assert len(declared) > len(codes.FRAMEWORK_CODES), "no built-in plugin declared a code"
    for code, plugin in declared.items():
        anchor = re.sub(r"[._]", "-", code)
        assert f'id="{anchor}"' in text, f"codes.html has no row (anchor) for {code}"
        if plugin != "framework":
            assert f">{plugin}<" in text, f"codes.html does not name the plugin {plugin}"
    # The table is the generated one, with summaries and help texts, not just the names.
    assert "Flatten the image with" in text


def test_settings_page_lists_every_setting(html: Path) -> None:
    text = page(html, "settings")
    assert "max_image_size" in text
    for key, _default, _doc in iter_setting_docs():
        assert key in text, f"settings.html misses {key}"
    assert "1 TiB" in text  # sizes are printed readably, not only in bytes


def test_hooks_page_documents_every_hookspec(html: Path) -> None:
    text = page(html, "hooks")
    for name in HOOKSPECS:
        assert f'id="importhooks.hookspecs.{name}"' in text, f"hooks.rst does not document {name}"
    for module in DEFAULT_PLUGINS:  # the generated table of built-in plugins
        assert module in text


def test_api_page_documents_the_embedding_api(html: Path) -> None:
    text = page(html, "api")
    for target in (
        "importhooks.pipeline.Pipeline", "importhooks.request.ImportRequest", "importhooks.request.Claims",
        "importhooks.request.Requester", "importhooks.result.ImportResult", "importhooks.context.ImportContext",
        "importhooks.data.ImageData", "importhooks.findings.Finding", "importhooks.findings.FindingCode",
        "importhooks.findings.Severity", "importhooks.findings.Verdict", "importhooks.events.Event",
        "importhooks.events.EventType", "importhooks.killswitch.KillSwitch", "importhooks.errors.ImporthooksError",
        "importhooks.errors.ConfigError", "importhooks.errors.RunAborted", "importhooks.pipeline.Pipeline.run",
    ):
        assert f'id="{target}"' in text, f"api.rst does not document {target}"


# -- (b) the hookspec docstrings -------------------------------------------------------


def test_hookspecs_cover_every_stage() -> None:
    assert {f"importhooks_{stage}" for stage in STAGES} <= set(HOOKSPECS)
    for name in HOOKSPECS:
        assert hasattr(getattr(hookspecs, name), "importhooks_spec"), f"{name} is not marked @hookspec"


@pytest.mark.parametrize("name", HOOKSPECS)
def test_hookspec_docstring_is_complete(name: str) -> None:
    function = getattr(hookspecs, name)
    doc = inspect.getdoc(function)
    assert doc, f"{name} has no docstring"
    signature = inspect.signature(function)
    for param in signature.parameters:
        assert f":param {param}:" in doc, f"{name} does not document its argument {param!r}"
    documented = set(re.findall(r":param (\w+):", doc))
    assert documented <= set(signature.parameters), f"{name} documents arguments it does not take"
    returns = signature.return_annotation
    if returns not in (None, "None", inspect.Signature.empty):
        assert ":return:" in doc, f"{name} returns {returns} but does not say what (:return:)"
    assert "Example::" in doc, f"{name} has no example"
    example = doc.split("Example::", 1)[1]
    lines = example.splitlines()[1:]
    code = textwrap.dedent("\n".join(line for line in lines if not line or line.startswith(" ")))
    assert "@hookimpl" in code and f"def {name}" in code, f"{name}'s example does not implement it"
    compile(code, f"<example of {name}>", "exec")


# -- the examples in the pages -----------------------------------------------------------


def test_site_plugin_example_runs_as_documented(tmp_path: Path) -> None:
    (tmp_path / "acme_image_policy.py").write_text(block("site_plugins.rst", "python", "acme_image_policy.py"))
    (tmp_path / "try_policy.py").write_text(block("site_plugins.rst", "python", "try_policy.py"))
    expected = block("site_plugins.rst", "text", "Output")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run([sys.executable, "try_policy.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == expected


def test_site_plugin_pyproject_declares_the_entry_point() -> None:
    data = tomllib.loads(block("site_plugins.rst", "toml", "pyproject.toml"))
    assert data["project"]["entry-points"]["importhooks.plugins"] == {"acme_policy": "acme_image_policy"}


def test_sample_settings_file_is_valid(tmp_path: Path) -> None:
    data = tomllib.loads(block("settings.rst", "toml", "/etc/glance/importhooks.toml"))
    settings = settings_from_mapping(data)
    assert settings != Settings()
    top_level = {key for key, _default, _doc in iter_setting_docs() if "." not in key}
    assert set(data) - {"timeouts", "plugins", "plugin"} <= top_level
    # The pipeline accepts it too (plugin names in [plugins] exist), with this machine's site plugins off.
    plugins = PluginSettings(**{**{f: getattr(settings.plugins, f) for f in ("disabled", "enabled", "order")},
                                "entry_points": False})
    Pipeline.from_settings(settings.replace(plugins=plugins, work_dir=tmp_path, halt_file=None))


@pytest.mark.parametrize("name", sorted(p.name for p in DOCS.glob("*.rst")))
def test_python_examples_compile(name: str) -> None:
    for options, text in code_blocks(name, "python"):
        compile(text, f"{name}: {options.get('caption', 'code-block')}", "exec")
