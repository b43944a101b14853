"""Targets of the guest family: the partition-table and filesystem readers behind ``os_type``.

The input is a raw disk claimed ``linux``: ``os_type`` reads its MBR/GPT/BSD tables and the
filesystems' superblocks (ext, XFS, FAT, exFAT, NTFS, ISO 9660, UDF, LVM, BitLocker) directly.
"""

from __future__ import annotations

from importhooks import Claims

from .harness import PipelineHarness
from .targets import Target, register

register(Target("os_type", "guest", "plugins/guest: partition tables, filesystems, installation media",
                lambda: PipelineHarness(("disk_format", "os_type"), Claims(disk_format="raw", os_type="linux")),
                "guest.dict", 1 << 20))
