"""Runs qemu-img for the built-in plugins: one way to name its files, limit it and read its failures.

Shared by ``qemu_img`` (``qemu-img info`` in ``inspect``) and ``conversion``
(``qemu-img convert`` in ``sanitize``); not a plugin itself.

* :func:`linked` gives qemu-img the data under a name the pipeline chose: a symlink
  from ``context.temp_path()`` in the run's private temporary directory. Nothing in
  it comes from the image or the request; it is absolute, so qemu-img never takes it
  for an option or a ``json:`` or ``protocol:`` pseudo-filename, and any relative
  name qemu resolves next to it lands in that otherwise empty directory.
* :func:`run` runs qemu-img through ``oslo_concurrency.processutils.execute`` under
  ``ProcessLimits``, in its own process group (killed with everything it started
  when its wall time runs out), with ``LC_ALL=C`` so its messages can be classified.
  Every way it fails becomes a :class:`QemuError` whose ``kind`` is
  ``failed``, ``resource_limit`` or ``timeout``; each plugin maps the kind to its own
  finding code. qemu-img's own words only ever reach ``QemuError.detail``, escaped
  and truncated by :func:`clip`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from oslo_concurrency import processutils

from importhooks import ImportContext, PluginOption
from importhooks.units import parse_duration, parse_size

#: Glance disk format -> qemu block driver. An ISO is read by qemu as a raw disk.
DRIVERS: Mapping[str, str] = {
    "raw": "raw",
    "iso": "raw",
    "qcow2": "qcow2",
    "vmdk": "vmdk",
    "vhd": "vpc",
    "vhdx": "vhdx",
    "vdi": "vdi",
    "qed": "qed",
    "luks": "luks",
}
#: The kinds of :class:`QemuError`.
FAILED = "failed"
RESOURCE_LIMIT = "resource_limit"
TIMEOUT = "timeout"
DETAIL_LIMIT = 500
#: Signals the kernel sends on a CPU-time limit (SIGXCPU at the soft, SIGKILL at the hard limit).
LIMIT_SIGNALS = frozenset({signal.SIGKILL, signal.SIGXCPU})
#: How hitting a limit shows in qemu-img's stderr (LC_ALL=C), seen with qemu 7.2: the loader
#: cannot map a library, a thread's stack cannot be mapped, a cache or a buffer cannot be
#: allocated (glib aborts with "failed to allocate"); a write past the file-size limit fails
#: with EFBIG, "File too large" (SIGXFSZ is ignored: oslo's prlimit wrapper is Python, which
#: ignores it, and exec keeps that).
LIMIT_MESSAGES = (
    "cannot allocate memory",
    "could not allocate",
    "failed to allocate",
    "out of memory",
    "failed to map segment",
    "resource temporarily unavailable",
    "file too large",
)
#: Seconds between two calls of a :func:`run` watch function.
WATCH_INTERVAL = 0.25


class QemuError(Exception):
    """qemu-img could not do its job; ``kind`` is FAILED, RESOURCE_LIMIT or TIMEOUT, ``detail`` for operators."""

    def __init__(self, kind: str, detail: str, exit_code: int | None = None) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.exit_code = exit_code


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits of one qemu-img run; ``timeout`` is capped by the stage's budget."""

    address_space: int
    cpu_time: int
    timeout: float
    file_size: int | None = None


# -- option parsers shared by the plugins -------------------------------------------------


def positive_size(value: object) -> int:
    """A size above zero (``1GiB`` or a number of bytes)."""
    size = parse_size(value)
    if size <= 0:
        raise ValueError(f"expected a size above zero such as 1GiB, got {value!r}")
    return size


def positive_int(value: object) -> int:
    """A whole number of seconds above zero."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"expected a whole number of seconds above zero, got {value!r}")
    return value


def positive_duration(value: object) -> float:
    """A duration above zero (``60s``, ``30m`` or seconds)."""
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"expected a duration above zero such as 60s, got {value!r}")
    return seconds


def binary_name(value: object) -> str:
    """The qemu-img program: a name looked up in PATH, or a path; never something like an option."""
    if not isinstance(value, str) or not value or value.startswith("-"):
        raise ValueError(f"expected the name or path of the qemu-img program, got {value!r}")
    return value


# -- running qemu-img ------------------------------------------------------------------


def clip(value: object) -> str:
    """Operator detail from qemu-img's output: escaped, one line, at most DETAIL_LIMIT characters."""
    escaped = repr(value.strip() if isinstance(value, str) else value)
    return escaped if len(escaped) <= DETAIL_LIMIT else escaped[: DETAIL_LIMIT - 3] + "..."


@contextmanager
def linked(context: ImportContext) -> Iterator[Path]:
    """An absolute symlink, named by the pipeline, to the current layer's data; removed on exit.

    Raises :class:`QemuError` (FAILED) if it cannot be made.
    """
    link = Path(os.path.abspath(context.temp_path()))
    try:
        os.symlink(os.path.abspath(context.data.path), link)
    except OSError as exc:
        raise QemuError(FAILED, f"cannot link the data for qemu-img: {exc!r}") from None
    try:
        yield link
    finally:
        link.unlink(missing_ok=True)


def time_limit(context: ImportContext, limit: float) -> int:
    """Whole seconds qemu-img may run: ``limit``, capped by the stage's budget and what is left of it."""
    limit = min(limit, context.settings.timeouts.of(context.stage), context.time_left())
    return max(1, math.ceil(limit))


def python_interpreter() -> str:
    """The Python that runs oslo's prlimit wrapper: ``sys.executable``, unless that is not a Python.

    Under an embedding server (uWSGI runs Glance) ``sys.executable`` is the server's own
    binary; the environment's ``bin/python3`` is then the interpreter to use.
    """
    executable = sys.executable
    if executable and os.path.basename(executable).startswith("python"):
        return executable
    candidate = os.path.join(sys.exec_prefix, "bin", "python3")
    return candidate if os.access(candidate, os.X_OK) else executable


def classify(exc: processutils.ProcessExecutionError) -> str:
    """RESOURCE_LIMIT if qemu-img died of a limit (by its signal or its message), else FAILED."""
    code = exc.exit_code
    stderr = str(exc.stderr or "").lower()
    if isinstance(code, int) and code < 0 and -code in LIMIT_SIGNALS:
        return RESOURCE_LIMIT
    if any(marker in stderr for marker in LIMIT_MESSAGES):
        return RESOURCE_LIMIT
    return FAILED


def _signal_group(process: subprocess.Popen[bytes]) -> None:
    if process.returncode is None:  # not reaped yet: the group id is still qemu-img's
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except OSError:
            pass  # already gone


def _kill(process: subprocess.Popen[bytes] | None) -> None:
    """Kill qemu-img (and anything it started: it leads its own process group) and reap it."""
    if process is None:
        return
    _signal_group(process)
    try:
        process.communicate(timeout=5)
    except (OSError, ValueError, subprocess.SubprocessError):
        pass


class _Watcher:
    """Calls a watch function every WATCH_INTERVAL while qemu-img runs; kills it when told to.

    The watch function returns ``None`` to let qemu-img go on, or a reason (an operator
    detail) to stop it as a resource limit; an exception it raises (the run's
    ``context.check()`` on a halt or a stage timeout) also stops qemu-img, and is
    raised again in the calling thread by :meth:`finish`.
    """

    def __init__(self, watch: Callable[[], str | None] | None) -> None:
        self._watch = watch
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reason: str | None = None
        self.error: BaseException | None = None

    def start(self, process: subprocess.Popen[bytes]) -> None:
        if self._watch is not None:
            self._thread = threading.Thread(target=self._loop, args=(process,), name="importhooks-qemu-watch",
                                            daemon=True)
            self._thread.start()

    def _loop(self, process: subprocess.Popen[bytes]) -> None:
        assert self._watch is not None
        while not self._stop.wait(WATCH_INTERVAL):
            try:
                self.reason = self._watch()
            except BaseException as exc:  # noqa: BLE001 - handed to the calling thread by finish()
                self.error = exc
            if self.reason is not None or self.error is not None:
                _signal_group(process)
                return

    def cancel(self) -> None:
        """Stop watching."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def finish(self) -> None:
        """Stop watching; raise what the watch function raised, or its reason as a QemuError."""
        self.cancel()
        if self.error is not None:
            raise self.error
        if self.reason is not None:
            raise QemuError(RESOURCE_LIMIT, self.reason)


def run(
    context: ImportContext,
    program: str,
    args: Sequence[str],
    limits: Limits,
    *,
    label: str,
    env: Mapping[str, str] | None = None,
    watch: Callable[[], str | None] | None = None,
    exit_codes: Sequence[int] = (0,),
) -> bytes:
    """Run ``program args`` (qemu-img) under ``limits``; its standard output.

    ``label`` names the command in details (``qemu-img info -f raw``). ``env`` adds
    environment variables. ``watch``, if given, is called every WATCH_INTERVAL seconds
    while qemu-img runs (see :class:`_Watcher`). ``exit_codes`` are the exit statuses
    that are not a failure (``qemu-img check`` exits 2 or 3 with its report). Raises
    :class:`QemuError` for every way qemu-img fails (with its ``exit_code`` when it
    exited), or what ``watch`` raised.
    """
    from oslo_concurrency import processutils  # heavy (oslo_utils.strutils): loaded on first use

    binary = shutil.which(program)
    if binary is None:
        raise QemuError(FAILED, f"qemu-img program not found: {program!r}")
    prlimit = processutils.ProcessLimits(address_space=limits.address_space, cpu_time=limits.cpu_time,
                                         file_size=limits.file_size)
    seconds = time_limit(context, limits.timeout)
    started: list[subprocess.Popen[bytes]] = []
    watcher = _Watcher(watch)

    def on_execute(process: subprocess.Popen[bytes]) -> None:
        started.append(process)
        watcher.start(process)

    try:
        stdout, _stderr = processutils.execute(
            binary, *args,
            prlimit=prlimit, python_exec=python_interpreter(), timeout=seconds,
            env_variables={**os.environ, "LC_ALL": "C", "LANG": "C", **(env or {})},
            preexec_fn=os.setsid, on_execute=on_execute, binary=True, check_exit_code=list(exit_codes),
        )
    except subprocess.TimeoutExpired:
        _kill(started[0] if started else None)
        watcher.finish()
        raise QemuError(TIMEOUT, f"{label} killed after {seconds} s") from None
    except processutils.ProcessExecutionError as exc:
        watcher.finish()  # a limit the watch found, or a halt, is why qemu-img died
        code = exc.exit_code if isinstance(exc.exit_code, int) else None
        raise QemuError(classify(exc), f"{label} exited with {exc.exit_code}: {clip(exc.stderr or '')}",
                        code) from None
    except OSError as exc:
        watcher.finish()
        raise QemuError(FAILED, f"qemu-img could not be started: {exc!r}") from None
    except BaseException:
        _kill(started[0] if started else None)
        watcher.cancel()
        raise
    watcher.finish()
    return bytes(stdout)


# -- options and guest reads shared by the plugins ----------------------------------------


def limit_options(command: str, *, address_space: int, cpu_time: int, timeout: float,
                  stage: str) -> tuple[PluginOption, ...]:
    """The four options of a plugin that runs ``qemu-img COMMAND``: program, memory, CPU and wall time."""
    return (
        PluginOption("binary", "qemu-img", "The qemu-img program: a name looked up in PATH, or a path.",
                     parse=binary_name),
        PluginOption("address_space", address_space, f"Address-space limit of qemu-img {command}.", size=True,
                     parse=positive_size),
        PluginOption("cpu_time", cpu_time, f"CPU-time limit of qemu-img {command}, in whole seconds.",
                     parse=positive_int),
        PluginOption("timeout", timeout, f"Wall-time limit of one qemu-img {command}; never more than what is "
                     f"left of the {stage} stage's budget.", parse=positive_duration),
    )


def limits_of(options: Mapping[str, Any], file_size: int | None = None) -> Limits:
    """The :class:`Limits` from a plugin's resolved :func:`limit_options`."""
    return Limits(options["address_space"], options["cpu_time"], options["timeout"], file_size=file_size)


#: Drivers that can name a backing file; guest reads open them with ``"backing": null``.
BACKING_DRIVERS = frozenset({"qcow2", "qed", "vmdk"})


def guest_slice(path: Path, driver: str, offset: int, size: int) -> str:
    """A ``json:`` source qemu reads as ``size`` bytes of the guest disk in ``path`` from ``offset``.

    A ``raw`` node slices the format node below it, which reads only the file ``path``
    (pipeline-chosen, serialised by :func:`json.dumps`) and never a backing file.
    ``offset`` and ``size`` must be multiples of 512.
    """
    node: dict[str, Any] = {"driver": driver, "file": {"driver": "file", "filename": str(path)}}
    if driver in BACKING_DRIVERS:
        node["backing"] = None
    return "json:" + json.dumps({"driver": "raw", "offset": offset, "size": size, "file": node})


def read_guest(context: ImportContext, program: str, path: Path, driver: str,
               ranges: Sequence[tuple[int, int]], limits: Limits) -> bytes:
    """The guest bytes of ``ranges`` (``(offset, size)``, multiples of 512), concatenated, read by qemu-img.

    One ``qemu-img convert`` concatenates the slices into a raw file from
    ``context.temp_path()``, read back and removed; slices this layer's earlier guest
    reads fetched with the same program and limits, and those a qcow2's own tables leave
    unallocated, are not read again
    (:mod:`._guest_reads`), and when none is left qemu-img does not run. Raises :class:`QemuError`.
    """
    from . import _guest_reads  # only a guest read needs it: loaded on first use

    def convert(missing: list[tuple[int, int]]) -> bytes:
        return _convert(context, program, path, driver, missing, limits)

    return _guest_reads.read(context, path, driver, ranges, convert, key=(program, limits))


def _convert(context: ImportContext, program: str, path: Path, driver: str,
             ranges: Sequence[tuple[int, int]], limits: Limits) -> bytes:
    """One ``qemu-img convert`` of the ``ranges`` slices into a raw file, read back and removed."""
    total = sum(size for _offset, size in ranges)
    out = context.temp_path(".raw")
    sources = [guest_slice(path, driver, offset, size) for offset, size in ranges]
    limits = Limits(limits.address_space, limits.cpu_time, limits.timeout, file_size=total + (1 << 20))
    try:
        run(context, program, ("convert", "--force-share", "-O", "raw", *sources, str(out)), limits,
            label=f"qemu-img convert (guest read, {driver})")
        with open(out, "rb") as handle:
            data = handle.read(total + 1)
    except OSError as exc:
        raise QemuError(FAILED, f"guest read output unreadable: {exc!r}") from None
    finally:
        out.unlink(missing_ok=True)
    if len(data) != total:
        raise QemuError(FAILED, f"guest read returned {len(data)} bytes, expected {total}")
    return data
