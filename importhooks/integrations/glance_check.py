"""``importhooks glance-check``: will Glance load the importhooks plugin, and its settings?

Glance loads import plugins only when an import runs, and skips one that fails to
load (the import then goes ahead unchecked). This command tells an operator before a
restart, from glance-api.conf, in Glance's own environment:

* ``enabled``: ``importhooks`` is in ``[image_import_opts] image_import_plugins``;
* ``entry point``: the entry point ``importhooks`` of ``glance.image_import.plugins``
  resolves here (importhooks and Glance's libraries are installed in this environment);
* ``settings``: ``[importhooks] config_file`` (or the defaults) loads, with its site
  plugins, into a pipeline;
* ``halt``: whether the kill switch is set (imports are then refused; not a failure).

One line per check; exit status 0 when Glance will load the plugin, 1 otherwise, 2 on a
usage error. A ``glance-image-import.conf`` beside a given file is read too, as Glance does.
"""

from __future__ import annotations

import argparse
import importlib.metadata
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from importhooks.text import escape

PLUGIN = "importhooks"
GROUP = "glance.image_import.plugins"
IMPORT_CONF = "glance-image-import.conf"

Print = Callable[[str], None]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="importhooks glance-check",
        description="Check that Glance will load the importhooks import plugin and its settings.")
    parser.add_argument("--config-file", action="append", required=True, metavar="FILE", type=Path,
                        help="glance-api.conf (repeat for more files, in Glance's order)")
    return parser


def config_files(given: Sequence[Path]) -> list[Path]:
    """The files Glance reads: the given ones, then ``glance-image-import.conf`` beside them if present."""
    files = list(given)
    for path in given:
        extra = path.parent / IMPORT_CONF
        if extra.is_file() and extra not in files:
            files.append(extra)
    return files


def read_config(files: Sequence[Path]) -> Any:
    """The options this check needs, parsed by oslo.config as Glance parses them."""
    from oslo_config import cfg, types

    conf = cfg.ConfigOpts()
    conf.register_opt(cfg.ListOpt("image_import_plugins", item_type=types.String(quotes=True), bounds=True,
                                  default=[]), group="image_import_opts")  # as Glance declares it
    conf.register_opt(cfg.StrOpt("config_file"), group=PLUGIN)
    conf(args=[], project="glance", prog="glance-api", default_config_files=[str(f) for f in files],
         default_config_dirs=[], use_env=False)
    return conf


def check(files: Sequence[Path], say: Print = print) -> bool:
    """Run every check, printing one line each; whether Glance will load the plugin."""
    ok = True

    def report(passed: bool | None, name: str, text: str) -> None:
        nonlocal ok
        ok = ok and passed is not False
        mark = {True: "ok  ", False: "FAIL", None: "warn"}[passed]
        say(f"{mark} {name}: {text}")

    missing = [f for f in files if not f.is_file()]
    if missing:
        report(False, "config", f"not a file: {escape(missing[0])}")
        return False
    try:
        conf = read_config(files)
    except Exception as exc:  # noqa: BLE001 - oslo.config raises several kinds for a bad file
        report(False, "config", f"cannot parse: {escape(exc)}")
        return False
    report(True, "config", ", ".join(escape(f) for f in files))

    plugins = list(conf.image_import_opts.image_import_plugins or [])
    if PLUGIN in plugins:
        report(True, "enabled", f"[image_import_opts] image_import_plugins = [{escape(', '.join(plugins))}]")
    else:
        report(False, "enabled", f"{PLUGIN} is not in [image_import_opts] image_import_plugins "
                                 f"([{escape(', '.join(plugins))}])")

    found = importlib.metadata.entry_points(group=GROUP, name=PLUGIN)
    if not found:
        report(False, "entry point", f"no entry point {PLUGIN!r} in {GROUP} here: install importhooks into "
                                     "Glance's environment")
    else:
        (entry,) = tuple(found)[:1]
        try:
            loaded = entry.load()
        except Exception as exc:  # noqa: BLE001 - whatever the import raises, Glance would skip the plugin
            report(False, "entry point", f"{escape(entry.value)} does not load: {escape(repr(exc))}")
        else:
            report(callable(loaded), "entry point", escape(entry.value))

    report_settings(conf.importhooks.config_file, report)
    return ok


def report_settings(config_file: str | None, report: Callable[[bool | None, str, str], None]) -> None:
    """The ``settings`` and ``halt`` lines: the pipeline Glance's workers would build."""
    from importhooks import Pipeline, load_settings

    where = escape(config_file) if config_file else "the defaults ([importhooks] config_file is not set)"
    try:
        pipeline = Pipeline.from_settings(load_settings(config_file or None))
    except Exception as exc:  # noqa: BLE001 - the plugin fails every import closed on any of these
        report(False, "settings", f"{where}: {escape(exc)}")
        return
    report(True, "settings", f"{where}: {len(pipeline.enabled_plugins)} plugins enabled")
    halt_file = pipeline.settings.halt_file
    if pipeline.killswitch.is_halted():
        report(None, "halt", "SET: every import fails until "
                             + (f"{escape(halt_file)} is removed" if halt_file else "the halt setting is false"))
    else:
        report(True, "halt", f"not set (halt_file {escape(halt_file) if halt_file else 'not configured'})")


def main(argv: Sequence[str] | None = None) -> int:
    """The command: 0 when Glance will load the plugin and its settings, 1 otherwise, 2 on a usage error."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help is 0, a usage error 2
        return exc.code if isinstance(exc.code, int) else 2
    return 0 if check(config_files(args.config_file)) else 1
