"""Cross-checks the format inspector with ``qemu-img info`` (``inspect``, last).

After every format plugin has run and only if nothing was found wrong so far, the
data goes through ``qemu-img info --output=json -f DRIVER`` (the driver named from
the detected ``disk_format``: qemu never probes the format), under resource limits
(``oslo_concurrency.processutils.ProcessLimits``) and a wall-time limit. What qemu
sees must agree with the facts: the format, the virtual size, no backing file, no
external data file, no VMDK extent other than the image itself. The hypervisor uses
qemu's view, so any disagreement means the inspector was fooled, or qemu was.

The path given to qemu-img is a symlink the pipeline names inside the run's private
temporary directory, pointing at the staged file: nothing in it comes from the image
or the request, it is absolute (never taken for an option or a ``json:`` or
``protocol:`` pseudo-filename), and any relative file name qemu resolves next to it
lands in that otherwise empty directory.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from oslo_concurrency import processutils

from importhooks import FindingCode, ImportContext, PluginOption, PluginOptions, Severity, hookimpl
from importhooks.units import parse_duration, parse_size

SECTION = "qemu_img"

MISMATCH = FindingCode(
    "qemu.mismatch",
    "qemu-img reads the image differently from the format inspector.",
    "qemu-img info, run with the detected format, disagrees with the format inspector on the format, "
    "the virtual size, a backing file, an external data file or a VMDK extent. The hypervisor would "
    "see qemu's view, so the image is not what it was checked to be. The detail names the difference.",
)
FAILED = FindingCode(
    "qemu.failed",
    "qemu-img could not read the image.",
    "qemu-img info exited with an error, printed something that is not its JSON report, or could not "
    "be started (check the plugin.qemu_img.binary option). The detail holds qemu-img's message.",
)
RESOURCE_LIMIT = FindingCode(
    "qemu.resource_limit",
    "Reading the image needed more memory or CPU time than allowed.",
    "qemu-img info ran out of its address space (plugin.qemu_img.address_space) or CPU time "
    "(plugin.qemu_img.cpu_time). Benign images need far less; the data may be built to exhaust the "
    "host. Raise the limit only for images you trust.",
)
TIMEOUT = FindingCode(
    "qemu.timeout",
    "Reading the image took too long.",
    "qemu-img info ran longer than plugin.qemu_img.timeout (or the rest of the inspect budget) and "
    "was killed.",
)
SKIPPED = FindingCode(
    "qemu.skipped",
    "The qemu-img cross-check was skipped.",
    "The detected disk format has no qemu block driver this plugin knows, so only the format "
    "inspector's checks apply to it.",
    Severity.INFO,
)

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
SECTOR = 512
#: qemu-img info's JSON is a few hundred bytes; qcow2 snapshot lists make it longer.
MAX_OUTPUT = 4 << 20
DETAIL_LIMIT = 500
#: Signals the kernel sends on a CPU-time limit (SIGXCPU at the soft, SIGKILL at the hard limit).
LIMIT_SIGNALS = frozenset({signal.SIGKILL, signal.SIGXCPU})
#: How hitting the address-space limit shows in qemu-img's stderr (LC_ALL=C), seen with qemu 7.2:
#: the loader cannot map a library, a thread's stack cannot be mapped, a cache or a buffer
#: cannot be allocated (glib aborts with "failed to allocate").
LIMIT_MESSAGES = (
    "cannot allocate memory",
    "could not allocate",
    "failed to allocate",
    "out of memory",
    "failed to map segment",
    "resource temporarily unavailable",
)


@hookimpl
def importhooks_finding_codes() -> list[FindingCode]:
    return [MISMATCH, FAILED, RESOURCE_LIMIT, TIMEOUT, SKIPPED]


def _positive_size(value: object) -> int:
    size = parse_size(value)
    if size <= 0:
        raise ValueError(f"expected a size above zero such as 1GiB, got {value!r}")
    return size


def _positive_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"expected a whole number of seconds above zero, got {value!r}")
    return value


def _positive_duration(value: object) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"expected a duration above zero such as 60s, got {value!r}")
    return seconds


def _binary(value: object) -> str:
    if not isinstance(value, str) or not value or value.startswith("-"):
        raise ValueError(f"expected the name or path of the qemu-img program, got {value!r}")
    return value


@hookimpl
def importhooks_plugin_options() -> PluginOptions:
    return PluginOptions(SECTION, (
        PluginOption("binary", "qemu-img", "The qemu-img program: a name looked up in PATH, or a path.",
                     parse=_binary),
        PluginOption("address_space", 1 << 30, "Address-space limit of qemu-img (Glance uses 1 GiB).",
                     size=True, parse=_positive_size),
        PluginOption("cpu_time", 30, "CPU-time limit of qemu-img, in whole seconds (Glance uses 30).",
                     parse=_positive_int),
        PluginOption("timeout", 60.0, "Wall-time limit of qemu-img; never more than what is left of the "
                     "inspect stage's budget.", parse=_positive_duration),
    ))


def _clip(value: object) -> str:
    """Operator detail from qemu-img's output: escaped, one line, at most DETAIL_LIMIT characters."""
    escaped = repr(value.strip() if isinstance(value, str) else value)
    return escaped if len(escaped) <= DETAIL_LIMIT else escaped[: DETAIL_LIMIT - 3] + "..."


def expected_virtual_size(facts: Mapping[str, Any], driver: str, data_size: int) -> int:
    """The virtual size qemu-img must report for the current layer.

    qemu's raw driver reports the file's length rounded up to whole 512-byte sectors
    (an ISO is a raw file to qemu; the ISO's own volume size is not visible to it).
    Every other driver must report the inspector's ``virtual_size`` exactly.
    """
    if driver == "raw":
        return -(-data_size // SECTOR) * SECTOR
    return int(facts["virtual_size"])


def compare(info: Mapping[str, Any], *, driver: str, virtual_size: int, path: str) -> list[tuple[str, str]]:
    """Where ``qemu-img info``'s JSON disagrees with the inspector, as ``(message, detail)`` pairs.

    ``path`` is the file name qemu-img was given: the only file a VMDK extent may name.
    An empty list means qemu-img and the inspector agree.
    """
    found: list[tuple[str, str]] = []
    qemu_format = info.get("format")
    if qemu_format != driver:
        found.append(("qemu-img reads the image as a different disk format.",
                      f"format: qemu {_clip(qemu_format)}, expected {driver!r}"))
    size = info.get("virtual-size")
    if isinstance(size, bool) or not isinstance(size, int) or size != virtual_size:
        found.append(("qemu-img reads a different virtual disk size than the format inspector.",
                      f"virtual size: qemu {_clip(size)}, inspector {virtual_size}"))
    for key in ("backing-filename", "full-backing-filename", "backing-filename-format"):
        if key in info:
            found.append(("qemu-img finds a backing file that the format inspector missed.",
                          f"{key}: {_clip(info[key])}"))
            break
    specific = info.get("format-specific")
    data = specific.get("data") if isinstance(specific, Mapping) else None
    if isinstance(data, Mapping):
        if "data-file" in data:
            found.append(("qemu-img finds an external data file that the format inspector missed.",
                          f"data-file: {_clip(data['data-file'])}"))
        extents = data.get("extents", [])
        for extent in extents if isinstance(extents, list) else [extents]:
            name = extent.get("filename") if isinstance(extent, Mapping) else extent
            if name != path:
                found.append(("qemu-img finds a VMDK extent outside the image.",
                              f"extent: {_clip(name)}"))
    return found


def _time_limit(context: ImportContext, limit: float) -> int:
    """Whole seconds qemu-img may run: the option, capped by the inspect stage's budget.

    Where the framework offers ``ImportContext.time_left()`` (what is left of the
    stage's budget), that caps it too.
    """
    limit = min(limit, context.settings.timeouts.inspect)
    time_left = getattr(context, "time_left", None)
    if callable(time_left):
        limit = min(limit, float(time_left()))
    return max(1, math.ceil(limit))


def _kill(process: subprocess.Popen[bytes] | None) -> None:
    """Kill qemu-img (and anything it started: it leads its own process group) and reap it."""
    if process is None:
        return
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except OSError:
        pass  # already gone
    try:
        process.communicate(timeout=5)
    except (OSError, ValueError, subprocess.SubprocessError):
        pass


def _classify(exc: processutils.ProcessExecutionError) -> FindingCode:
    code = exc.exit_code
    stderr = str(exc.stderr or "").lower()
    if isinstance(code, int) and code < 0 and -code in LIMIT_SIGNALS:
        return RESOURCE_LIMIT
    if any(marker in stderr for marker in LIMIT_MESSAGES):
        return RESOURCE_LIMIT
    return FAILED


def run_qemu_img(context: ImportContext, driver: str, path: Path) -> dict[str, Any] | None:
    """Run ``qemu-img info`` on ``path`` under the configured limits; its parsed JSON, or ``None``.

    Every way it can fail becomes a finding here (``None`` is returned then).
    """
    options = context.options(SECTION)
    binary = shutil.which(options["binary"])
    if binary is None:
        context.report(FAILED, detail=f"qemu-img program not found: {options['binary']!r}")
        return None
    limits = processutils.ProcessLimits(address_space=options["address_space"], cpu_time=options["cpu_time"])
    seconds = _time_limit(context, options["timeout"])
    started: list[subprocess.Popen[bytes]] = []
    try:
        stdout, _stderr = processutils.execute(
            binary, "info", "--output=json", "--force-share", "-f", driver, "--", str(path),
            prlimit=limits, timeout=seconds, env_variables={**os.environ, "LC_ALL": "C", "LANG": "C"},
            preexec_fn=os.setsid, on_execute=started.append, binary=True,
        )
    except subprocess.TimeoutExpired:
        _kill(started[0] if started else None)
        context.report(TIMEOUT, detail=f"qemu-img info -f {driver} killed after {seconds} s")
        return None
    except processutils.ProcessExecutionError as exc:
        stderr = _clip(exc.stderr or "")
        context.report(_classify(exc), detail=f"qemu-img info -f {driver} exited with {exc.exit_code}: {stderr}")
        return None
    except OSError as exc:
        context.report(FAILED, detail=f"qemu-img could not be started: {exc!r}")
        return None
    if len(stdout) > MAX_OUTPUT:
        context.report(FAILED, detail=f"qemu-img info printed {len(stdout)} bytes, more than {MAX_OUTPUT}")
        return None
    try:
        info = json.loads(stdout)
    except (ValueError, RecursionError) as exc:
        context.report(FAILED, detail=f"qemu-img info output is not JSON ({exc}): {_clip(os.fsdecode(stdout))}")
        return None
    if not isinstance(info, dict):
        context.report(FAILED, detail=f"qemu-img info output is not a JSON object: {_clip(os.fsdecode(stdout))}")
        return None
    return info


@hookimpl(trylast=True)
def importhooks_inspect(context: ImportContext) -> None:
    """Run qemu-img info on a layer every other inspector passed, and compare."""
    facts = context.facts
    disk_format = facts.get("disk_format")
    if context.has_errors() or disk_format is None or "virtual_size" not in facts:
        return  # never hand data already rejected, or not inspected, to qemu-img
    if facts.get("container_format", "bare") != "bare":
        return  # a compressed stream or archive: its disk is checked once a sanitize pass unpacks it
    driver = DRIVERS.get(disk_format)
    if driver is None:
        context.report(SKIPPED, detail=f"no qemu block driver for disk format {disk_format!r}")
        return
    link = Path(os.path.abspath(context.temp_path()))
    try:
        os.symlink(os.path.abspath(context.data.path), link)
    except OSError as exc:
        context.report(FAILED, detail=f"cannot link the data for qemu-img: {exc!r}")
        return
    try:
        info = run_qemu_img(context, driver, link)
    finally:
        link.unlink(missing_ok=True)
    if info is None:
        return
    expected = expected_virtual_size(facts, driver, context.data.size)
    for message, detail in compare(info, driver=driver, virtual_size=expected, path=str(link)):
        context.report(MISMATCH, message, detail=detail)
