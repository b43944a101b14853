"""Targets of the container family: tar/OVA, OVF, zip and the decompressors' budget logic.

The pipeline targets run ``content_type`` (libmagic names the container), the container's
plugin (which unpacks it in ``sanitize``) and ``disk_format`` for the disk inside. ``ovf``
calls the descriptor parser directly: it is pure and fast, and only :class:`OvfError` may
leave it.
"""

from __future__ import annotations

from importhooks_plugins.containers import ovf

from importhooks import Claims

from .harness import FuzzFailure, PipelineHarness, expect
from .targets import OneInput, Target, register

KIB = 1024


def _ovf() -> OneInput:
    def one(data: bytes) -> object:
        parsed = expect((ovf.OvfError,), ovf.parse_descriptor, data)
        if parsed is not None and not parsed.disks:
            raise FuzzFailure("a descriptor with no disk was accepted")
        return parsed
    return one


register(Target("ova", "containers", "ova, tar_headers, tar_reader, tar_rules, ovf: an OVA unpacked",
                lambda: PipelineHarness(("content_type", "ova", "ovf", "disk_format"),
                                        Claims(container_format="ova")), "tar.dict", 256 * KIB))
register(Target("ovf", "containers", "ovf.parse_descriptor: the OVF XML, through defusedxml",
                _ovf, "ovf.dict", 16 * KIB))
register(Target("zip", "containers", "zip and _zip_local: central directory, local headers, inflate",
                lambda: PipelineHarness(("content_type", "zip", "disk_format"),
                                        Claims(container_format="compressed")), "zip.dict", 128 * KIB))
register(Target("compression", "containers", "compression, _gzip, _xz: gzip/xz/bzip2/zstd and their budgets",
                lambda: PipelineHarness(("content_type", "compression", "disk_format"),
                                        Claims(container_format="compressed")), "compression.dict", 64 * KIB))
