"""Targets of the disk-format family: the detector and each format plugin's header and table readers.

Each runs the real pipeline with ``disk_format`` (the detector: oslo.utils' inspectors and
importhooks' own probes, which set the ``disk_format`` fact every format plugin keys on)
and the one plugin under test, the claim naming its format.
"""

from __future__ import annotations

from importhooks import Claims

from .harness import PipelineHarness
from .targets import OneInput, Target, register

KIB = 1024


def _pipeline(*plugins: str, claim: str | None = None) -> OneInput:
    return PipelineHarness(("disk_format", *plugins), Claims(disk_format=claim))


register(Target("detector", "formats", "plugins/formats/_detector.py and disk_format: every format's probe",
                lambda: _pipeline(), "disk_formats.dict", 256 * KIB))
register(Target("qcow2", "formats", "qcow2: header, extensions, snapshots, L1/L2 and refcount tables",
                lambda: _pipeline("qcow2", claim="qcow2"), "qcow2.dict", 512 * KIB))
register(Target("vmdk", "formats", "vmdk: sparse header, embedded descriptor, grain directory and tables",
                lambda: _pipeline("vmdk", claim="vmdk"), "vmdk.dict", 256 * KIB))
register(Target("vhd", "formats", "vhd: footer, its copy, dynamic header and BAT",
                lambda: _pipeline("vhd", claim="vhd"), "vhd.dict", 128 * KIB))
register(Target("vhdx", "formats", "vhdx: file identifier, headers, region tables, metadata, BAT",
                lambda: _pipeline("vhdx", claim="vhdx"), "vhdx.dict", 4096 * KIB))
register(Target("vdi", "formats", "vdi: pre-header, header and block map",
                lambda: _pipeline("vdi", claim="vdi"), "vdi.dict", 64 * KIB))
register(Target("qed", "formats", "qed: header, L1 and L2 tables",
                lambda: _pipeline("qed", claim="qed"), "qed.dict", 128 * KIB))
register(Target("luks", "formats", "luks: LUKS1 phdr and key slots, LUKS2 binary and JSON headers",
                lambda: _pipeline("luks", claim="luks"), "luks.dict", 4096 * KIB))
register(Target("nested_headers", "formats", "nested_headers: disk headers inside partitions and at offsets",
                lambda: _pipeline("nested_headers", claim="raw"), "nested.dict", 256 * KIB))
