"""Cross-checks the format inspector with ``qemu-img info`` and ``qemu-img check`` (``inspect``, last).

After every format plugin has run and only if nothing was found wrong so far, the
data goes through ``qemu-img info --output=json -f DRIVER`` (the driver named from
the detected ``disk_format``: qemu never probes the format), under resource limits
(``oslo_concurrency.processutils.ProcessLimits``) and a wall-time limit. What qemu
sees must agree with the facts: the format, the virtual size, no backing file, no
external data file, no VMDK extent other than the image itself. The hypervisor uses
qemu's view, so any disagreement means the inspector was fooled, or qemu was.

Then, when they agree and the format is one qemu-img can check (qcow2, qed, vhdx,
vmdk, vdi; option ``check``, default on), ``qemu-img check --output=json`` runs under
the same limits: metadata qemu itself calls corrupt (exit 2, or check errors) is
rejected, leaked clusters alone (exit 3) are a warning, exit 63 (the format cannot be
checked) is an info finding.

The path given to qemu-img is a symlink the pipeline names inside the run's private
temporary directory, pointing at the staged file: nothing in it comes from the image
or the request, it is absolute (never taken for an option or a ``json:`` or
``protocol:`` pseudo-filename), and any relative file name qemu resolves next to it
lands in that otherwise empty directory. How qemu-img is named, limited, run and its
failures classified is shared with the ``conversion`` plugin (:mod:`._qemu`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from importhooks import FindingCode, ImportContext, PluginOption, PluginOptions, Severity, hookimpl

from . import _qemu
from ._qemu import DRIVERS, QemuError
from ._qemu import clip as _clip

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
    "qemu-img info or check exited with an error (check: exit 1, the check could not be completed), "
    "printed something that is not its JSON report, or could not be started (check the "
    "plugin.qemu_img.binary option). The detail holds qemu-img's message.",
)
RESOURCE_LIMIT = FindingCode(
    "qemu.resource_limit",
    "Reading the image needed more memory or CPU time than allowed.",
    "qemu-img info or check ran out of its address space (plugin.qemu_img.address_space) or CPU time "
    "(plugin.qemu_img.cpu_time). Benign images need far less; the data may be built to exhaust the "
    "host. Raise the limit only for images you trust.",
)
TIMEOUT = FindingCode(
    "qemu.timeout",
    "Reading the image took too long.",
    "qemu-img info or check ran longer than plugin.qemu_img.timeout (or the rest of the inspect budget) and "
    "was killed.",
)
SKIPPED = FindingCode(
    "qemu.skipped",
    "The qemu-img cross-check was skipped.",
    "The detected disk format has no qemu block driver this plugin knows, so only the format "
    "inspector's checks apply to it; or qemu-img check said it cannot check the format (exit 63).",
    Severity.INFO,
)
CHECK_CORRUPT = FindingCode(
    "qemu.check_corrupt",
    "qemu-img check found the image's metadata corrupt.",
    "qemu-img check (exit 2) counted corruptions: reference counts that do not match the tables, tables "
    "or clusters outside the file or on each other, block entries past the end. qemu would read, and on "
    "writes damage, something other than what was checked. The detail holds qemu-img's counts.",
)
CHECK_LEAKS = FindingCode(
    "qemu.check_leaks",
    "The image has leaked clusters (space allocated but unused).",
    "qemu-img check (exit 3) found clusters with a reference count that nothing uses: wasted space, not "
    "a danger ('qemu-img check -r leaks' repairs it).",
    Severity.WARNING,
)

SECTOR = 512
#: qemu-img info's JSON is a few hundred bytes; qcow2 snapshot lists make it longer.
MAX_OUTPUT = 4 << 20
#: The qemu drivers qemu-img check can check (it exits 63 for the others: raw, vpc, luks).
CHECK_DRIVERS = frozenset({"qcow2", "qed", "vhdx", "vmdk", "vdi"})
#: qemu-img check's exit statuses: checked, clean; corruptions found; only leaks found; not supported.
CHECK_OK, CHECK_CORRUPTIONS, CHECK_LEAKED, CHECK_UNSUPPORTED = 0, 2, 3, 63


@hookimpl
def importhooks_finding_codes() -> list[FindingCode]:
    return [MISMATCH, FAILED, RESOURCE_LIMIT, TIMEOUT, SKIPPED, CHECK_CORRUPT, CHECK_LEAKS]


@hookimpl
def importhooks_plugin_options() -> PluginOptions:
    # Glance limits qemu-img info to 1 GiB of address space and 30 s of CPU time, as here.
    return PluginOptions(SECTION, (
        *_qemu.limit_options("info and check", address_space=1 << 30, cpu_time=30, timeout=60.0, stage="inspect"),
        PluginOption("check", True, "Run qemu-img check after qemu-img info on the formats it can check "
                     "(qcow2, qed, vhdx, vmdk, vdi), under the same limits."),
    ))


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


#: What each kind of qemu-img failure is reported as.
_CODES = {_qemu.FAILED: FAILED, _qemu.RESOURCE_LIMIT: RESOURCE_LIMIT, _qemu.TIMEOUT: TIMEOUT}


def run_qemu_img(context: ImportContext, driver: str, path: Path, command: str = "info") -> dict[str, Any] | None:
    """Run ``qemu-img COMMAND`` (``info`` or ``check``) on ``path`` under the configured limits; its JSON.

    Every way it can fail becomes a finding here (``None`` is returned then); ``check``
    exiting 2 or 3 is not a failure (its JSON says why), exiting 63 is ``qemu.skipped``.
    """
    options = context.options(SECTION)
    limits = _qemu.limits_of(options)
    label = f"qemu-img {command} -f {driver}"
    exit_codes = (CHECK_OK, CHECK_CORRUPTIONS, CHECK_LEAKED) if command == "check" else (0,)
    try:
        stdout = _qemu.run(context, options["binary"],
                           (command, "--output=json", "--force-share", "-f", driver, "--", str(path)),
                           limits, label=label, exit_codes=exit_codes)
    except QemuError as exc:
        if command == "check" and exc.exit_code == CHECK_UNSUPPORTED:
            context.report(SKIPPED, detail=f"{label}: format not supported by qemu-img check")
        else:
            context.report(_CODES[exc.kind], detail=exc.detail)
        return None
    if len(stdout) > MAX_OUTPUT:
        context.report(FAILED, detail=f"{label} printed {len(stdout)} bytes, more than {MAX_OUTPUT}")
        return None
    try:
        info = json.loads(stdout)
    except (ValueError, RecursionError) as exc:
        context.report(FAILED, detail=f"{label} output is not JSON ({exc}): {_clip(os.fsdecode(stdout))}")
        return None
    if not isinstance(info, dict):
        context.report(FAILED, detail=f"{label} output is not a JSON object: {_clip(os.fsdecode(stdout))}")
        return None
    return info


def _count(report: Mapping[str, Any], key: str) -> int:
    """A count from qemu-img check's JSON (absent means none); anything but a whole number is -1."""
    value = report.get(key, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else -1


def judge_check(context: ImportContext, report: Mapping[str, Any]) -> None:
    """Findings from ``qemu-img check``'s JSON: corruptions reject, leaks alone warn."""
    counts = {key: _count(report, key) for key in ("corruptions", "leaks", "check-errors")}
    detail = ", ".join(f"{key} {value}" for key, value in counts.items())
    if counts["corruptions"] or counts["check-errors"]:
        context.report(CHECK_CORRUPT, detail=f"qemu-img check: {detail}")
    elif counts["leaks"]:
        context.report(CHECK_LEAKS, detail=f"qemu-img check: {detail}")


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
    check = bool(context.options(SECTION)["check"]) and driver in CHECK_DRIVERS
    try:
        with _qemu.linked(context) as link:
            info = run_qemu_img(context, driver, link)
            if info is None:
                return
            expected = expected_virtual_size(facts, driver, context.data.size)
            found = compare(info, driver=driver, virtual_size=expected, path=str(link))
            for message, detail in found:
                context.report(MISMATCH, message, detail=detail)
            report = run_qemu_img(context, driver, link, "check") if check and not found else None
    except QemuError as exc:
        context.report(_CODES[exc.kind], detail=exc.detail)
        return
    if report is not None:
        judge_check(context, report)
        if not context.has_errors():
            facts["qemu_img_check"] = "passed"  # read by _guest_reads before it reads a qcow2's clusters itself
