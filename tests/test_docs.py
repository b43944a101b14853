"""The documentation: it builds without warnings, its generated tables match the code,
every hookspec is documented well enough to implement, and its examples work."""

from __future__ import annotations

import ast
import html as html_lib
import importlib
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
import uuid
from pathlib import Path

import pytest

import importhooks
from importhooks import codes, hookspecs
from importhooks.errors import BadRequest
from importhooks.pipeline import Pipeline
from importhooks.plugins import DEFAULT_PLUGINS, build_registry
from importhooks.server.staging import image_key
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


def visible(text: str) -> str:
    """A page's text as a reader sees it: no tags (syntax highlighting splits code into spans), entities decoded."""
    return html_lib.unescape(re.sub(r"<[^>]+>", "", text))


def test_docs_build_every_page(html: Path) -> None:
    for name in ("index", "installation", "hooks", "site_plugins", "embedding", "settings", "cli", "codes", "api"):
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


# -- installation, packaging, embedding: the newcomer's path (issue 12) ----------------------------------


def test_installation_page_says_what_setup_does_and_where_the_command_is(html: Path) -> None:
    text = visible(page(html, "installation"))
    assert 'href="installation.html"' in page(html, "index"), "installation is not in the table of contents"
    setup = (ROOT / "scripts" / "setup.sh").read_text(encoding="utf-8")
    listed = re.search(r"^APT_PACKAGES=\((.*?)\)", setup, re.S | re.M)
    assert listed is not None, "scripts/setup.sh has no APT_PACKAGES"
    packages = listed.group(1).split()
    assert {"qemu-utils", "libmagic1", "libarchive13"} <= set(packages)
    for package in packages:
        assert package in text, f"installation.html does not name the system package {package}"
    for needed in (".venv/bin/importhooks", ". .venv/bin/activate", "/opt/importhooks/bin/pip install",
                   "apt-get install qemu-utils libmagic1 libarchive13", "SKIP_DEMO=1"):
        assert needed in text, f"installation.html does not show {needed!r}"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "The command is then `.venv/bin/importhooks`" in readme
    assert "docs/installation.rst" in readme


def test_settings_page_lists_every_builtin_plugin_option(html: Path) -> None:
    text = page(html, "settings")
    registry = build_registry(Settings(plugins=PluginSettings(entry_points=False)))
    declared = registry.declared_options()
    assert "disk_format" in declared
    for spec in declared.values():
        for option in spec.options:
            assert f"plugin.{spec.section}.{option.name}" in text, f"settings.html misses {spec.section}.{option.name}"
    chunk = text.rsplit("plugin.disk_format.chunk_size", 1)[1].split("</tr>", 1)[0]  # its row in the table
    assert "1048576" in chunk and "Bytes read per step" in chunk  # its default and meaning, from the code


def test_tables_and_code_examples_wrap_instead_of_scrolling(html: Path) -> None:
    """The docs' own CSS is linked from every page and makes tables and code blocks fit a 1280 px window
    (checked by hand with headless Chromium: no element wider than the page on any page)."""
    for name in ("codes", "hooks", "settings"):
        assert '_static/importhooks.css' in page(html, name), f"{name}.html does not link importhooks.css"
    css = (html / "_static" / "importhooks.css").read_text(encoding="utf-8")
    rules = {selector.strip(): body for selector, body in re.findall(r"([^{}]+)\{([^}]*)\}", re.sub(
        r"/\*.*?\*/", "", css, flags=re.S))}
    assert "table-layout: fixed" in rules["table.docutils"] and "width: 100%" in rules["table.docutils"]
    assert any("white-space: pre-wrap" in body for selector, body in rules.items() if "div.highlight pre" in selector)
    assert any("white-space: normal" in body for selector, body in rules.items() if "code.literal" in selector)
    assert "max-width: none" in rules["div.body"]


def test_site_plugin_packaging_works_as_documented(tmp_path: Path) -> None:
    """The files the page shows, in one directory, installed the way it says (offline here)."""
    source, target = tmp_path / "acme-image-policy", tmp_path / "site"
    source.mkdir()
    for name, language in (("acme_image_policy.py", "python"), ("try_policy.py", "python"),
                           ("pyproject.toml", "toml")):
        (source / name).write_text(block("site_plugins.rst", language, name))
    install = block("site_plugins.rst", "sh", "install")
    assert "/opt/importhooks/bin/pip install ." in install
    command = [sys.executable, "-m", "pip", "install", ".", "--no-deps", "--no-build-isolation", "--no-index",
               "--disable-pip-version-check", "--target", str(target)]
    done = subprocess.run(command, cwd=source, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert (target / "acme_image_policy.py").is_file()
    assert not (target / "try_policy.py").exists(), "the try-out script was installed as a module"
    env = {**os.environ, "PYTHONPATH": str(target)}
    cli = Path(sys.executable).with_name("importhooks")
    listed = subprocess.run([str(cli), "plugins", "--format", "json"], env=env, capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    (plugin,) = [p for p in json.loads(listed.stdout)["plugins"] if p["name"] == "acme_policy"]
    assert (plugin["source"], plugin["distribution"], plugin["version"]) == ("entry point", "acme-image-policy",
                                                                             "2024.1")


def _markdown_python(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(encoding="utf-8"), re.S | re.M)


def _importhooks_names() -> tuple[set[str], dict[str, set[str]]]:
    """Public names of importhooks' modules, and each module's own public names."""
    modules = {name.rsplit(".", 1)[-1]: importlib.import_module(f"importhooks.{name}") for name in (
        "context", "data", "errors", "events", "findings", "killswitch", "pipeline", "request", "result",
        "settings", "server.discovery", "server.runner", "server.staging", "server.status", "server.validation")}
    names = {attr for module in modules.values() for attr in vars(module) if not attr.startswith("_")
             and getattr(getattr(module, attr), "__module__", "").startswith("importhooks")}
    return names | set(importhooks.__all__), {name: set(vars(module)) for name, module in modules.items()}


def _unbound_importhooks_names(code: str) -> set[str]:
    """importhooks names a snippet uses without binding them itself (by import, assignment, def ...)."""
    names, module_attrs = _importhooks_names()
    tree = ast.parse(code)
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            bound.add(node.id)
    used: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.attr in module_attrs.get(node.value.id, set()):
                used.add(node.value.id)  # a kit module used as one: status.check(...)
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in names:
            used.add(node.id)
    return used - bound


@pytest.mark.parametrize("source", ["embedding.rst", "api.rst", "site_plugins.rst", "README.md"])
def test_every_snippet_imports_the_importhooks_names_it_uses(source: str) -> None:
    if source.endswith(".md"):
        snippets = _markdown_python(ROOT / source)
    else:
        snippets = [text for _options, text in code_blocks(source, "python")]
    assert snippets, f"{source} has no python snippet"
    for snippet in snippets:
        missing = _unbound_importhooks_names(snippet)
        assert not missing, f"{source}: a snippet uses {sorted(missing)} without importing them:\n{snippet}"


def test_snippet_check_finds_a_missing_import() -> None:
    assert _unbound_importhooks_names("pipeline = Pipeline.from_settings(load_settings())\n") == {
        "Pipeline", "load_settings"}
    assert _unbound_importhooks_names("status.check(Call.STAGE, image.status)\n") == {"status", "Call"}
    assert _unbound_importhooks_names("from importhooks.server import status\n"
                                      "from importhooks.server.status import Call\n"
                                      "status.check(Call.STAGE, image.status)\n") == set()


def test_readme_embedding_snippet_stores_through_store() -> None:
    (snippet,) = [s for s in _markdown_python(ROOT / "README.md") if "Pipeline.from_settings" in s]
    tree = ast.parse(snippet)
    runs = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "run"]
    assert runs and all("store" in {keyword.arg for keyword in run.keywords} for run in runs)
    assert "request_id=image_id" in snippet  # the image's UUID names the run


def test_image_id_rule_is_in_the_guide_and_holds(html: Path) -> None:
    text = page(html, "embedding")
    assert "Image ids are UUIDs" in text and "image_key" in text and "uuid4()" in text
    key = str(uuid.uuid4())
    assert image_key(key.upper()) == key
    for bad in ("../../etc/passwd", "IMAGE_ID", key + "/x", ""):
        with pytest.raises(BadRequest) as info:
            image_key(bad)
        assert info.value.field == "image_id"


def test_api_page_promise_holds() -> None:
    """Everything api.rst documents above *The server kit* is importable from ``importhooks``."""
    text = (DOCS / "api.rst").read_text(encoding="utf-8").split("The server kit\n", 1)[0]
    targets = re.findall(r"^\.\. auto(?:class|function):: (importhooks\.[\w.]+)$", text, re.M)
    assert len(targets) > 15
    for target in targets:
        module_name, name = target.rsplit(".", 1)
        assert name in importhooks.__all__, f"api.rst documents {target}, which importhooks does not export"
        assert getattr(importhooks, name) is getattr(importlib.import_module(module_name), name)
    for error in ("ImporthooksError", "ConfigError", "PluginLoadError", "RunAborted", "Rejected"):
        assert error in text and error in importhooks.__all__


# -- example messages are the real ones ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The real text output of the audit installation.rst shows (the images it describes, built for real)."""
    directory = tmp_path_factory.mktemp("audited")
    with open(directory / "disk.raw", "wb") as handle:
        handle.truncate(1 << 20)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "/etc/passwd", "-F", "raw",
                    "evil.qcow2", "64M"], cwd=directory, check=True)
    cli = Path(sys.executable).with_name("importhooks")
    done = subprocess.run([str(cli), "audit", "--disk-format", "qcow2", "disk.raw", "evil.qcow2"], cwd=directory,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    return done.stdout


#: A documented ``elapsed:`` line stands for any time.
_ELAPSED = re.compile(r"^ *elapsed: [0-9.]+ s$")


def assert_lines_in_order(documented: str, real: str) -> None:
    """Every line of ``documented`` is a line of ``real``, in the same order; ``...`` stands for any lines."""
    lines = iter(real.splitlines())
    for line in documented.splitlines():
        if line.strip() == "...":
            continue
        assert any(_same_line(line, got) for got in lines), f"not in the real output (in this order): {line!r}\n{real}"


def _same_line(documented: str, real: str) -> bool:
    if _ELAPSED.match(documented) and _ELAPSED.match(real):
        return documented.index("elapsed") == real.index("elapsed")
    return documented == real


@pytest.mark.parametrize("page_name", ["installation.rst", "cli.rst"])
def test_documented_audit_output_is_the_real_output(audited: str, page_name: str) -> None:
    documented = block(page_name, "text", "importhooks audit --disk-format qcow2 disk.raw evil.qcow2")
    assert_lines_in_order(documented, audited)
    messages = re.findall(r"^\s+(?:error|warning|info) \S+ \[.*\]\n\s+(.*)$", documented, re.M)
    assert len(messages) == 2


def test_documented_plugins_verbose_output_is_the_real_output(tmp_path: Path) -> None:
    """cli.rst's ``importhooks plugins -v`` sample, with its settings file, is what the command prints."""
    (tmp_path / "site.toml").write_text(block("cli.rst", "toml", "site.toml"), encoding="utf-8")
    documented = block("cli.rst", "text", "importhooks plugins -v --config site.toml")
    cli = Path(sys.executable).with_name("importhooks")
    done = subprocess.run([str(cli), "plugins", "-v", "--config", "site.toml"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert_lines_in_order(documented, done.stdout)
    assert "(default 60)" in documented and "importhooks plugins [--config FILE] [-v]" in (DOCS / "cli.rst").read_text()


def test_documented_json_output_is_the_real_output(tmp_path: Path) -> None:
    """cli.rst's JSON sample is the real document of its image, but for the run's id and time (and a cut hash)."""
    documented = json.loads(block("cli.rst", "text", "importhooks audit --format json disk.raw"))
    with open(tmp_path / "disk.raw", "wb") as handle:
        handle.truncate(1 << 20)
    cli = Path(sys.executable).with_name("importhooks")
    done = subprocess.run([str(cli), "audit", "--format", "json", "disk.raw"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    real = json.loads(done.stdout)
    cut = documented["checksums"]["os_hash_value"].removesuffix("...")
    assert real["checksums"]["os_hash_value"].startswith(cut) and len(cut) >= 16
    for document in (documented, real):
        del document["request_id"], document["elapsed_s"], document["checksums"]["os_hash_value"]
    assert documented == real
    assert list(documented) == list(real)  # the keys in the order printed


#: A finding in sample text output: its line, then its message on the next.
_FINDING = re.compile(r"^ *((?:error|warning|info) [a-z0-9_.]+ \[stage \w+, plugin \w+\])\n *(\S.*)$", re.M)


def test_every_finding_message_in_the_docs_is_the_real_message(audited: str) -> None:
    """A finding shown anywhere in the docs or the README shows the message that finding really has
    (rendered by the audit of the documented images; a sample of another finding needs its image here too)."""
    real = {(finding, message) for finding, message in _FINDING.findall(audited)}
    pages = [*DOCS.glob("*.rst"), *DOCS.glob("*/*.rst"), ROOT / "README.md"]
    shown = [(path.name, pair) for path in pages for pair in _FINDING.findall(path.read_text(encoding="utf-8"))]
    assert len(shown) >= 4
    for name, pair in shown:
        assert pair in real, f"{name}: {pair[0]!r} is shown with {pair[1]!r}; the real findings are {sorted(real)}"


def test_readme_demo_message_is_the_real_message(audited: str) -> None:
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    quoted = re.search(r"`qcow2\.backing_file`, whose message the image's owner would see is \"([^\"]+)\"", readme)
    assert quoted is not None
    assert f"      {quoted.group(1)}\n" in audited


def test_finding_lines_in_the_docs_name_real_codes_and_their_plugins() -> None:
    """Sample output anywhere in the docs names codes that exist, with the plugin that declares them."""
    declared = builtin_codes()
    pages = [*DOCS.glob("*.rst"), *DOCS.glob("*/*.rst"), ROOT / "README.md"]
    seen = 0
    for path in pages:
        for code, plugin in re.findall(r"(?:error|warning|info) ([a-z0-9_.]+) \[stage \w+, plugin (\w+)\]",
                                       path.read_text(encoding="utf-8")):
            seen += 1
            assert declared.get(code) == plugin, f"{path.name}: {code} is not declared by {plugin}"
    assert seen >= 2


def test_readers_page_states_the_rule_for_every_plugin_that_parses(html: Path) -> None:
    """Issue 11: the union-or-reject principle is written down, with the rule each parsing plugin follows."""
    text = visible(page(html, "readers"))
    assert "either sees the union of what they all see, or rejects" in text
    for plugin in ("disk_format", "content_type", "compression", "zip", "ova", "qcow2", "qemu_img", "vmdk",
                   "nested_headers", "os_type"):
        assert f"({plugin}" in text or f", {plugin})" in text, plugin
    assert "Readers that disagree" in visible(page(html, "index"))
