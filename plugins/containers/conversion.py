"""Converts every accepted disk to one format with ``qemu-img convert`` (``sanitize``, off by default).

Operators whose image store wants a single format (Ceph RBD clones raw images) set
``[plugin.conversion] convert_to``, as Glance's ``image_conversion`` import plugin
does. Only a bare disk that every inspector passed is converted: ``qemu-img
convert -f DRIVER -O FORMAT`` reads it through a symlink the pipeline named, under
resource limits, a wall-time limit and a free-disk-space floor, and writes a file
from ``context.temp_path()``. That file replaces the data, and the next pass
inspects it like any upload; the source layer records ``converted_to``.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from collections.abc import Callable, Mapping
from pathlib import Path

from importhooks import FindingCode, ImportContext, PluginOption, PluginOptions, Severity, hookimpl
from importhooks.units import parse_size

from ..formats import _qemu
from ..formats._qemu import DRIVERS, QemuError

SECTION = "conversion"
#: The ``kind`` of the layers this plugin makes.
KIND = "converted"

FAILED = FindingCode(
    "conversion.failed",
    "The image could not be converted to the format this cloud stores.",
    "qemu-img convert exited with an error, could not be started (check plugin.conversion.binary), or "
    "made no output file; or plugin.conversion.convert_to names a format that is not in disk_formats. "
    "The detail holds qemu-img's message.",
)
RESOURCE_LIMIT = FindingCode(
    "conversion.resource_limit",
    "Converting the image needed more memory, CPU time or disk space than allowed.",
    "qemu-img convert ran out of its address space (plugin.conversion.address_space) or CPU time "
    "(plugin.conversion.cpu_time), tried to write a file larger than the virtual size allows, or the "
    "work directory's free space fell below plugin.conversion.min_free_space. The detail says which.",
)
TIMEOUT = FindingCode(
    "conversion.timeout",
    "Converting the image took too long.",
    "qemu-img convert ran longer than plugin.conversion.timeout (or the rest of the sanitize budget) "
    "and was killed.",
)
MISMATCH = FindingCode(
    "conversion.mismatch",
    "The converted image is not in the format it was converted to.",
    "The output of qemu-img convert was inspected again and detected as another disk format than "
    "plugin.conversion.convert_to: the disk's own content starts like a disk image (an image inside "
    "the image). Stored, it would be taken for that inner image. The detail names both formats.",
)
SKIPPED = FindingCode(
    "conversion.skipped",
    "The image was kept in its own format.",
    "The detected disk format is not converted: an ISO is a raw file to qemu already, a LUKS image "
    "needs its key, and some formats have no qemu driver this plugin knows.",
    Severity.INFO,
)
_CODES = {_qemu.FAILED: FAILED, _qemu.RESOURCE_LIMIT: RESOURCE_LIMIT, _qemu.TIMEOUT: TIMEOUT}

#: Formats qemu-img may write, by their Glance name (Glance's vhd is qemu's vpc).
TARGETS: Mapping[str, str] = {name: DRIVERS[name] for name in ("raw", "qcow2", "vmdk", "vhd", "vhdx", "vdi")}
#: Detected formats kept as they are (see SKIPPED).
KEPT = frozenset({"iso", "luks"})
#: ``-o`` options an operator may set: none names another file (backing, data file) or a secret.
OUTPUT_OPTIONS = frozenset({
    "adapter_type", "block_size", "block_state_zero", "cluster_size", "compat", "compression_type",
    "extended_l2", "force_size", "hwversion", "lazy_refcounts", "log_size", "preallocation",
    "refcount_bits", "static", "subformat", "toolsversion", "zeroed_grain",
})
_OPTION_VALUE = re.compile(r"^[A-Za-z0-9_.+-]+$")
#: The output may be this much larger than the virtual size (metadata of qcow2, VMDK, VHDX ...);
#: qemu-img runs with RLIMIT_FSIZE = virtual size + virtual size / 16 + OUTPUT_HEADROOM.
OUTPUT_HEADROOM = 256 << 20
#: glibc reserves 64 MiB of address space per malloc arena, up to 8 per core: qemu-img's I/O
#: threads would spend the address-space limit on reservations (seen with qemu 7.2).
ENVIRONMENT = {"MALLOC_ARENA_MAX": "2"}


@hookimpl
def importhooks_finding_codes() -> list[FindingCode]:
    return [FAILED, RESOURCE_LIMIT, TIMEOUT, MISMATCH, SKIPPED]


def _target(value: object) -> str:
    if not isinstance(value, str) or (value and value not in TARGETS):
        raise ValueError(f"expected one of {', '.join(TARGETS)} (vhd is qemu's vpc), or \"\" for no "
                         f"conversion, got {value!r}")
    return value


def _output_options(value: object) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"expected a list of \"name=value\" strings such as [\"compat=1.1\"], got {value!r}")
    for item in value:
        name, equals, setting = item.partition("=")
        if not equals or name not in OUTPUT_OPTIONS or not _OPTION_VALUE.match(setting):
            raise ValueError(f"{item!r} is not name=value with a name among {', '.join(sorted(OUTPUT_OPTIONS))} "
                             "and a value of letters, digits and _.+-")
    return tuple(value)


@hookimpl
def importhooks_plugin_options() -> PluginOptions:
    return PluginOptions(SECTION, (
        PluginOption("convert_to", "", "Disk format every import is converted to: raw, qcow2, vmdk, vhd, vhdx or "
                     "vdi; empty: no conversion.", parse=_target),
        PluginOption("output_options", (), "qemu-img -o options of the output, e.g. [\"compat=1.1\"].",
                     parse=_output_options),
        *_qemu.limit_options("convert", address_space=1 << 30, cpu_time=1800, timeout=1800.0, stage="sanitize"),
        PluginOption("min_free_space", 1 << 30, "Free space the work directory must keep while converting; "
                     "0: no check.", size=True, parse=parse_size),
    ))


def _free_space(directory: Path) -> int:
    return shutil.disk_usage(directory).free


def _space_watch(context: ImportContext, directory: Path, floor: int) -> Callable[[], str | None]:
    """What :func:`_qemu.run` calls while qemu-img converts: the run's halt and deadline, then free space."""

    def watch() -> str | None:
        context.check()
        if floor:
            try:
                free = _free_space(directory)
            except OSError as exc:
                return f"cannot read the work directory's free space: {exc!r}"
            if free < floor:
                return f"work directory free space is {free} bytes, under min_free_space ({floor})"
        return None

    return watch


def _discard(path: Path) -> None:
    """Remove what qemu-img left at ``path``; whatever stays goes with the run's temporary directory."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


def _convert(context: ImportContext, source: str, target: str, virtual_size: int) -> None:
    """Convert the current layer into a new file and make it the data (findings on failure)."""
    options = context.options(SECTION)
    out = context.temp_path(f".{target}")
    floor = options["min_free_space"]
    try:
        reason = _space_watch(context, out.parent, floor)()
        if reason is not None:
            raise QemuError(_qemu.RESOURCE_LIMIT, reason)
        limits = _qemu.limits_of(options, file_size=virtual_size + virtual_size // 16 + OUTPUT_HEADROOM)
        extra = ("-o", ",".join(options["output_options"])) if options["output_options"] else ()
        label = f"qemu-img convert -f {DRIVERS[source]} -O {TARGETS[target]}"
        with _qemu.linked(context) as link:
            _qemu.run(context, options["binary"],
                      ("convert", "--force-share", "-f", DRIVERS[source], "-O", TARGETS[target], *extra, "--",
                       str(link), os.path.abspath(out)),
                      limits, label=label, env=ENVIRONMENT, watch=_space_watch(context, out.parent, floor))
        try:
            made = os.lstat(out)
        except OSError:
            raise QemuError(_qemu.FAILED, f"{label} exited with 0 but made no output file") from None
        if not stat.S_ISREG(made.st_mode):
            raise QemuError(_qemu.FAILED, f"{label} made something other than a regular file")
    except QemuError as exc:
        _discard(out)
        context.report(_CODES[exc.kind], detail=exc.detail)
        return
    except BaseException:
        _discard(out)
        raise
    context.replace_data(out, kind=KIND)
    context.facts["converted_to"] = target


@hookimpl(trylast=True)
def importhooks_sanitize(context: ImportContext) -> None:
    """Convert a bare disk every inspector passed, unless it is in ``convert_to`` already."""
    target: str = context.options(SECTION).get("convert_to", "")
    facts = context.facts
    source = facts.get("disk_format")
    if not target or context.has_errors() or source is None or "virtual_size" not in facts:
        return  # off, data already rejected, or not inspected
    if facts.get("container_format", "bare") != "bare":
        return  # a compressed stream or an archive: an unpacking plugin replaces it in this pass
    if context.data.kind == KIND and source != target:
        context.reject(MISMATCH, detail=f"converted to {target!r}, inspected as {source!r}")
    if source == target:
        return
    if source in KEPT or source not in DRIVERS:
        context.report(SKIPPED, detail=f"disk format {source!r} is not converted")
        return
    if target not in context.settings.disk_formats:
        context.reject(FAILED, detail=f"plugin.conversion.convert_to {target!r} is not in disk_formats")
    virtual_size = int(facts["virtual_size"])
    if virtual_size > context.settings.max_image_size:  # disk_format rejected it already: never write it
        context.reject(RESOURCE_LIMIT, detail=f"virtual size {virtual_size} is over max_image_size")
    _convert(context, source, target, virtual_size)
