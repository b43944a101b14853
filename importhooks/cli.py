"""The ``importhooks`` command: audit images, list plugins, print the discovery documents.

``importhooks audit PATH...`` runs the same pipeline an image service runs and
prints each verdict as text, JSON lines or SARIF. Exit status: 0 every path was
accepted, 1 at least one was rejected, 2 a usage, configuration or file error
(one line on stderr, never a traceback). The command only reads its inputs; each
run's temporary files are removed by the pipeline.
"""

from __future__ import annotations

import argparse
import importlib.metadata
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

from .context import ImportContext
from .discovery import import_info, import_schema
from .errors import ConfigError, PluginLoadError
from .events import Event, EventType
from .findings import Verdict
from .hookspecs import hookimpl
from .pipeline import Pipeline
from .plugins import toml_value
from .report import escape, render_json, render_summary, render_text
from .request import Claims, ImportRequest
from .result import ImportResult
from .sarif import build_sarif
from .settings import Settings, load_settings
from .units import parse_size

EXIT_ACCEPTED, EXIT_REJECTED, EXIT_ERROR = 0, 1, 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
_QUIET_LOGGERS = ("oslo_utils",)  # their warnings repeat what the findings already say


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


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of 1 or more, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    """The parser of the ``importhooks`` command and its sub-commands."""
    common = _Parser(add_help=False)
    common.add_argument("--config", metavar="FILE", help="settings file (TOML); default: built-in defaults")
    common.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                        help="log more (-v: import events, -vv: progress events)")
    parser = _Parser(prog="importhooks", description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"importhooks {version()}")
    parser.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    audit = commands.add_parser("audit", parents=[common], help="check image files with the import pipeline",
                                description="Run the import pipeline over each PATH and print its verdict.")
    audit.add_argument("paths", nargs="+", metavar="PATH", help="image file to audit (read, never written)")
    audit.add_argument("--disk-format", metavar="D", help="claim this disk format, as an import request would")
    audit.add_argument("--container-format", metavar="C", help="claim this container format")
    audit.add_argument("--os-type", metavar="O", help="claim this os_type")
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
        logging.getLogger(name).setLevel(logging.ERROR if verbosity <= 0 else logging.NOTSET)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        for name, old in saved[1].items():
            logging.getLogger(name).setLevel(old)


def _load(args: argparse.Namespace, extra_plugins: Sequence[tuple[str, object]] = ()) -> Pipeline:
    settings: Settings = load_settings(args.config)
    if getattr(args, "max_image_size", None) is not None:
        settings = settings.replace(max_image_size=args.max_image_size)
    return Pipeline.from_settings(settings, extra_plugins=extra_plugins)


def _check_paths(paths: Sequence[str]) -> None:
    for path in paths:
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            raise UsageError(f"no such file: {path}") from None
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror}") from None
        except ValueError:  # a NUL byte: no file can have this name
            raise UsageError(f"not a valid path: {path}") from None
        if not stat.S_ISREG(mode):
            raise UsageError(f"not a regular file: {path}")
        if not os.access(path, os.R_OK):
            raise UsageError(f"cannot read {path}: permission denied")


def _emit(out: IO[str], text: str, progress: ProgressBar | None) -> None:
    if progress is not None:
        progress.clear()
    out.write(text + "\n")
    out.flush()


def _audit(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    progress = ProgressBar(err) if args.format == "text" and err.isatty() else None
    pipeline = _load(args, [("cli_progress", progress)] if progress else ())
    _check_paths(args.paths)
    claims = Claims(disk_format=args.disk_format, container_format=args.container_format, os_type=args.os_type)

    def run_one(path: str) -> ImportResult | str:
        try:
            return pipeline.run(ImportRequest(Path(path), claims))
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
                _emit(err, f"importhooks: error: {escape(outcome)}", progress)
                continue
            audited.append((path, outcome))
            if args.format == "json":
                _emit(out, render_json(path, outcome), None)
            elif args.format == "text":
                _emit(out, render_text(path, outcome) + "\n", progress)
    except BaseException:  # Ctrl-C, a closed stdout: stop the audits still running, at their next read
        pipeline.killswitch.halt()
        raise
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    verdicts = [result.verdict for _path, result in audited if result is not None]
    if args.format == "text":
        _emit(out, render_summary(verdicts, len(errors)), progress)
    elif args.format == "sarif":
        document = build_sarif(audited, pipeline.catalog, version(), errors=errors)
        _emit(out, json.dumps(document, indent=2), None)
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


_info = _document(lambda pipeline: import_info(pipeline.settings, halted=pipeline.killswitch.is_halted()))
_schema = _document(lambda pipeline: import_schema(pipeline.settings))


def main(argv: list[str] | None = None) -> int:
    """Run the ``importhooks`` command with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    out, err = sys.stdout, sys.stderr
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
        err.write("importhooks: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # piped into head, say: nothing more to write
        _silence_stdout()
        return EXIT_ERROR
    err.write(f"importhooks: error: {escape(message)}\n")
    return EXIT_ERROR


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # not a real file (tests) or already closed
        pass
