"""The ``importhooks`` command: audit images, list plugins, print the discovery documents.

``importhooks audit PATH...`` runs the same pipeline an image service runs and
prints each verdict as text, JSON lines or SARIF. Exit status: 0 every path was
accepted, 1 at least one was rejected, 2 a usage, configuration or file error
(one line on stderr, never a traceback), 130 interrupted. A closed pipe stops the
output, not the audit. The command only reads its inputs; each run's temporary
files are removed by the pipeline.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import json
import logging
import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, NoReturn

from ..context import ImportContext
from ..errors import ConfigError, PluginLoadError
from ..events import Event, EventType
from ..findings import Verdict
from ..hookspecs import hookimpl
from ..pipeline import Pipeline
from ..plugins import toml_value
from ..request import Claims, ImportRequest, Requester
from ..result import ImportResult
from ..settings import CONTAINER_FORMATS, DISK_FORMATS, Settings, load_settings
from ..text import escape
from ..units import parse_size
from .output import Output, silence
from .report import one_line, render_json, render_requester, render_summary, render_text
from .sarif import build_sarif

EXIT_ACCEPTED, EXIT_REJECTED, EXIT_ERROR = 0, 1, 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
#: The ``--help`` description: plain text, no reStructuredText markup.
DESCRIPTION = "Audit image files with the import pipeline, list its plugins, print its discovery documents."
#: Libraries whose log repeats what the findings say (oslo_utils) or describes themselves (libarchive's
#: build): errors only by default, warnings with -v, everything with -vv.
_QUIET_LOGGERS = ("oslo_utils", "libarchive")


class UsageError(Exception):
    """A bad command line, reported as one line on stderr with exit status 2."""


def version() -> str:
    """The installed importhooks version."""
    try:
        return importlib.metadata.version("importhooks")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0+unknown"


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exceptions, not exits."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _known(what: str, names: Sequence[str]) -> Callable[[str], str]:
    """An argument type accepting one of ``names`` exactly; anything else is a usage error naming them."""

    def check(text: str) -> str:
        if text in names:
            return text
        hint = f"; did you mean {text.lower()!r}?" if text.lower() in names else ""
        raise argparse.ArgumentTypeError(f"unknown {what} {text!r} (known: {', '.join(names)}){hint}")

    return check


def _name(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a name, got an empty one")
    return text


def _property(text: str) -> tuple[str, str]:
    key, equals, value = text.partition("=")
    if not equals or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of 1 or more, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    """The parser of the ``importhooks`` command and its sub-commands."""
    common = _Parser(add_help=False)
    # SUPPRESS: a --config given before the command ('importhooks --config F audit') is not reset by it.
    common.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="settings file (TOML); default: built-in defaults")
    common.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                        help="log more (-v: import events, -vv: progress events); plugins -v: each plugin's options")
    parser = _Parser(prog="importhooks", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"importhooks {version()}")
    parser.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="settings file (TOML) for any command; also accepted after the command")
    parser.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    audit = commands.add_parser("audit", parents=[common], help="check image files with the import pipeline",
                                description="Run the import pipeline over each PATH and print its verdict.")
    audit.add_argument("paths", nargs="+", metavar="PATH", help="image file to audit (read, never written)")
    audit.add_argument("--disk-format", metavar="D", type=_known("disk format", DISK_FORMATS),
                       help=f"claim this disk format, as an import request would: {', '.join(DISK_FORMATS)}")
    audit.add_argument("--container-format", metavar="C", type=_known("container format", CONTAINER_FORMATS),
                       help=f"claim this container format: {', '.join(CONTAINER_FORMATS)}")
    audit.add_argument("--os-type", metavar="O", help="claim this os_type")
    audit.add_argument("--property", metavar="KEY=VALUE", type=_property, action="append", default=[],
                       dest="properties", help="an image property of the request, e.g. name=web01 (repeatable)")
    audit.add_argument("--user", metavar="ID", type=_name, help="the requester's user ID (default: anonymous)")
    audit.add_argument("--project", metavar="ID", type=_name, help="the requester's project ID")
    audit.add_argument("--role", metavar="ROLE", type=_name, action="append", default=[], dest="roles",
                       help="a role of the requester (repeatable)")
    audit.add_argument("--max-image-size", metavar="SIZE", type=_size,
                       help="override max_image_size: 4GiB, 512MiB, 1TiB or bytes")
    audit.add_argument("--format", choices=("text", "json", "sarif"), default="text",
                       help="text for people (default), json (one line per path) or sarif (SARIF 2.1.0)")
    audit.add_argument("--jobs", "-j", metavar="N", type=_positive, default=1,
                       help="audit N paths at a time (output keeps the argument order)")

    plugins = commands.add_parser("plugins", parents=[common], help="list the plugins and each hook's call order",
                                  description="List the plugins and each hook's call order; with -v, each "
                                              "plugin's options: value in effect, default, meaning.")
    plugins.add_argument("--format", choices=("text", "json"), default="text")
    commands.add_parser("info", parents=[common], help="print the value-discovery document (GET /v2/info/import)")
    commands.add_parser("schema", parents=[common], help="print the import request JSON schema")
    commands.add_parser("glance-check", help="will OpenStack Glance load the importhooks plugin? (docs/glance.rst)",
                        add_help=False)  # parsed by importhooks.integrations.glance_check
    return parser


class ProgressBar:
    """A plugin drawing one progress line on a terminal for runs that take over ``delay`` seconds.

    Registered with ``Pipeline.from_settings(extra_plugins=[("cli_progress", bar)])``;
    it only reads the events and the request's path, and draws on ``stream`` only.
    """

    def __init__(self, stream: IO[str], *, delay: float = 1.0, width: int = 30) -> None:
        self.stream = stream
        self.delay = delay
        self.width = width
        self._lock = threading.Lock()
        self._started: dict[str, float] = {}
        self._drawn = False

    @hookimpl
    def importhooks_notify(self, event: Event, context: ImportContext | None) -> None:
        """Draw progress events; forget a run and clear the line when it finishes."""
        with self._lock:
            if event.type is EventType.FINISHED:
                self._started.pop(event.request_id, None)
                self._clear_locked()
                return
            started = self._started.setdefault(event.request_id, time.monotonic())
            if event.type is not EventType.PROGRESS or event.percent is None:
                return
            if time.monotonic() - started < self.delay:
                return
            percent = max(0.0, min(100.0, event.percent))
            filled = round(self.width * percent / 100)
            name = escape(context.request.path.name) if context is not None else event.request_id
            line = f"[{'#' * filled}{'.' * (self.width - filled)}] {percent:5.1f}% {escape(event.stage or '')} {name}"
            self.stream.write(f"\r{line}\x1b[K")
            self.stream.flush()
            self._drawn = True

    def clear(self) -> None:
        """Erase the progress line (before printing a result on the same terminal)."""
        with self._lock:
            self._clear_locked()

    def _clear_locked(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False


class _EscapingFormatter(logging.Formatter):
    """Log lines on a terminal: untrusted text in a message cannot inject escapes or fake lines."""

    def format(self, record: logging.LogRecord) -> str:
        return escape(super().format(record))


@contextmanager
def _logging(verbosity: int) -> Iterator[None]:
    """Log to stderr, WARNING by default: the notify log stays quiet unless ``-v``."""
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_EscapingFormatter("importhooks: %(name)s: %(levelname)s: %(message)s"))
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    saved = root.level, {name: logging.getLogger(name).level for name in _QUIET_LOGGERS}
    root.addHandler(handler)
    root.setLevel(level)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR if verbosity <= 0 else logging.WARNING if verbosity == 1
                                         else logging.NOTSET)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        for name, old in saved[1].items():
            logging.getLogger(name).setLevel(old)


def _load(args: argparse.Namespace, extra_plugins: Sequence[tuple[str, object]] = ()) -> Pipeline:
    settings: Settings = load_settings(getattr(args, "config", None))
    if getattr(args, "max_image_size", None) is not None:
        settings = settings.replace(max_image_size=args.max_image_size)
    return Pipeline.from_settings(settings, extra_plugins=extra_plugins)


def _check_paths(paths: Sequence[str]) -> None:
    for path in paths:
        if path == "-":
            raise UsageError("'-' (standard input) is not supported: save the image to a file and give its path")
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            raise UsageError(f"no such file: {path}") from None
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror}") from None
        except ValueError:  # a NUL byte: no file can have this name
            raise UsageError(f"not a valid path: {path}") from None
        if not stat.S_ISREG(mode):
            folder = stat.S_ISDIR(mode)
            hint = f" (a directory: give the image files in it, e.g. {path.rstrip('/')}/*)" if folder else ""
            raise UsageError(f"not a regular file: {path}{hint}")
        if not os.access(path, os.R_OK):
            raise UsageError(f"cannot read {path}: permission denied")


def _request_parts(args: argparse.Namespace) -> tuple[Claims, Requester]:
    properties: dict[str, str] = {}
    for key, value in args.properties:
        if key in properties:
            raise UsageError(f"--property {key} is given twice")
        properties[key] = value
    claims = Claims(disk_format=args.disk_format, container_format=args.container_format, os_type=args.os_type,
                    properties=properties)
    return claims, Requester(user=args.user, project=args.project, roles=tuple(args.roles))


def _audit(args: argparse.Namespace, out_stream: IO[str], err_stream: IO[str]) -> int:
    progress = ProgressBar(err_stream) if args.format == "text" and err_stream.isatty() else None
    pipeline = _load(args, [("cli_progress", progress)] if progress else ())
    claims, requester = _request_parts(args)
    _check_paths(args.paths)
    out, err = Output(out_stream, progress), Output(err_stream, progress)

    def run_one(path: str) -> ImportResult | str:
        try:
            return pipeline.run(ImportRequest(Path(path), claims, requester))
        except OSError as exc:  # the file vanished, or work_dir is unusable
            return f"cannot audit {path}: {exc.strerror or exc}"

    audited: list[tuple[str, ImportResult | None]] = []
    errors: list[tuple[str, str]] = []
    executor = ThreadPoolExecutor(max_workers=args.jobs, thread_name_prefix="importhooks-audit")
    try:
        for path, outcome in zip(args.paths, executor.map(run_one, args.paths), strict=True):
            if isinstance(outcome, str):
                errors.append((path, outcome))
                audited.append((path, None))
                err.line(f"importhooks: error: {escape(outcome)}")
                continue
            audited.append((path, outcome))
            if args.format == "json":
                out.line(render_json(path, outcome))
            elif args.format == "text":
                out.line(render_text(path, outcome) + "\n")
    except BaseException:  # Ctrl-C: stop the audits still running, at their next read
        pipeline.killswitch.halt()
        raise
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    verdicts = [result.verdict for _path, result in audited if result is not None]
    if args.format == "text":
        out.line(render_requester(requester))
        out.line(render_summary(verdicts, len(errors)))
    elif args.format == "sarif":
        document = build_sarif(audited, pipeline.catalog, version(), errors=errors)
        out.line(json.dumps(document, indent=2))
    if errors:
        return EXIT_ERROR
    return EXIT_REJECTED if Verdict.REJECT in verdicts else EXIT_ACCEPTED


def _option_lines(pipeline: Pipeline) -> dict[str, list[tuple[str, str, str, str]]]:
    """``importhooks plugins -v``: each plugin's options as (key, value in effect, default, doc)."""
    return {name: [(f"plugin.{spec.section}.{option.name}", toml_value(pipeline.options[spec.section][option.name]),
                    toml_value(option.default), option.doc) for option in spec.options]
            for name, spec in pipeline.registry.declared_options().items()}


def _plugins(args: argparse.Namespace, out: IO[str]) -> int:
    pipeline = _load(args)
    registry = pipeline.registry
    infos = list(reversed(registry.infos.values()))  # registered last-called first: show in call order
    order = registry.hook_order()
    options = _option_lines(pipeline) if getattr(args, "verbose", 0) else {}
    if args.format == "json":
        document = {"plugins": [{"name": i.name, "source": i.source, "module": i.module, "file": i.file,
                                 "distribution": i.distribution, "version": i.version, "enabled": i.enabled,
                                 **({"options": [dict(zip(("key", "value", "default", "doc"), row, strict=True))
                                                 for row in options.get(i.name, [])]} if options else {})}
                                for i in infos],
                    "hooks": order}
        out.write(json.dumps(document, indent=2) + "\n")
        return EXIT_ACCEPTED
    lines = [f"registered plugins ({len(infos)}):"]
    for info in infos:
        origin = f" from {info.distribution} {info.version or ''}".rstrip() if info.distribution else ""
        state = "enabled" if info.enabled else "disabled"
        lines.append(f"  {escape(info.name)}: {escape(info.source)}, module {escape(info.module)}"
                     f"{escape(origin)}, {state}")
        for key, value, default, doc in options.get(info.name, []):
            changed = "" if value == default else f" (default {escape(default)})"
            lines.append(f"    {escape(key)} = {escape(value)}{changed}: {escape(doc)}")
    lines.append("hook call order:")
    for hook, impls in order.items():
        lines.append(f"  {hook}:" + ("" if impls else " (no implementations)"))
        lines.extend(f"    {number}. {escape(impl)}" for number, impl in enumerate(impls, 1))
    out.write("\n".join(lines) + "\n")
    return EXIT_ACCEPTED


def _document(build: Callable[[Pipeline], dict[str, Any]]) -> Callable[[argparse.Namespace, IO[str]], int]:
    def command(args: argparse.Namespace, out: IO[str]) -> int:
        out.write(json.dumps(build(_load(args)), indent=2) + "\n")
        return EXIT_ACCEPTED

    return command


def _info_document(pipeline: Pipeline) -> dict[str, Any]:
    # The server kit (its import methods bring httpx) loads only for the commands that print its documents.
    from ..server.discovery import import_info

    return import_info(pipeline.settings, halted=pipeline.killswitch.is_halted())


def _schema_document(pipeline: Pipeline) -> dict[str, Any]:
    from ..server.discovery import import_schema

    return import_schema(pipeline.settings)


_info = _document(_info_document)
_schema = _document(_schema_document)


def main(argv: list[str] | None = None) -> int:
    """Run the ``importhooks`` command with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    # A closed descriptor (``>&-``) leaves sys.stdout or sys.stderr None: write into nothing instead.
    out, err = sys.stdout or io.StringIO(), sys.stderr or io.StringIO()
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["glance-check"]:  # run in Glance's environment; loads Glance's libraries only here
        from ..integrations.glance_check import main as glance_check
        return glance_check(argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            raise UsageError("a command is required: audit, plugins, info or schema (see 'importhooks --help')")
        with _logging(getattr(args, "verbose", 0)):
            if args.command == "audit":
                return _audit(args, out, err)
            if args.command == "plugins":
                return _plugins(args, out)
            return (_info if args.command == "info" else _schema)(args, out)
    except SystemExit as exc:  # --help and --version
        return EXIT_ACCEPTED if exc.code is None else exc.code if isinstance(exc.code, int) else EXIT_ERROR
    except UsageError as exc:
        message = str(exc)
    except ConfigError as exc:
        message = f"configuration error: {exc}"
    except PluginLoadError as exc:
        message = f"plugin error: {exc}"
    except KeyboardInterrupt:
        Output(err).line("importhooks: interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # plugins, info or schema piped into head: the reader had enough, no failure
        silence(out)
        return EXIT_ACCEPTED
    Output(err).line(f"importhooks: error: {one_line(message)}")
    return EXIT_ERROR

