"""The finding codes of what :mod:`._guest_layout` finds odd in a guest's partition table.

Each problem the layout reader records as ``(code, detail)`` is reported by the ``os_type``
plugin under one of these codes. A problem never stops the read: the verdict on the
``os_type`` claim is made from whatever could be read.
"""

from __future__ import annotations

from importhooks import FindingCode, Severity

_WHY = " The guest may not boot, or its firmware may see partitions this reader does not."


def _code(name: str, summary: str, detail: str, severity: Severity = Severity.WARNING) -> FindingCode:
    return FindingCode(name, summary, detail, severity)


CODES: dict[str, FindingCode] = {code.code: code for code in (
    _code("partition.past_end", "A partition reaches past the end of the disk.",
          "A partition-table entry (or an EBR's link) points beyond the guest disk's virtual size. Nothing "
          "outside the disk is read." + _WHY),
    _code("partition.overlap", "Two partitions overlap.",
          "Two entries of the partition table share sectors; writing one corrupts the other." + _WHY),
    _code("partition.bad_range", "A partition ends before it starts.",
          "A GPT entry's last LBA is below its first LBA; the entry is ignored." + _WHY),
    _code("partition.mbr_entry", "The MBR partition table is damaged.",
          "An MBR or EBR entry has an invalid status byte, zero sectors, a second extended partition, or an "
          "EBR lacks its 0x55AA signature. The entry is ignored." + _WHY),
    _code("partition.ebr_loop", "The chain of logical partitions loops.",
          "An EBR links back to one already read; the chain is followed no further." + _WHY),
    _code("partition.ebr_count", "The disk has too many logical partitions.",
          "The EBR chain is longer than the reader follows (64 links): a partition past that point could "
          "hide a filesystem, so the disk is rejected.", Severity.ERROR),
    _code("partition.gpt_missing", "The GPT header is missing.",
          "Sector 0 holds a protective MBR entry (type 0xee) but there is no GPT header at LBA 1; the "
          "backup header in the last sector is read if there is one." + _WHY),
    _code("partition.gpt_protective_mbr", "The GPT disk has no protective MBR.",
          "Sector 0 of a GPT disk has no entry of type 0xee." + _WHY),
    _code("partition.gpt_hybrid_mbr", "The disk has both a GPT and an MBR of its own.",
          "A hybrid MBR beside a GPT, as hybrid installer ISOs have; firmware may follow either table.",
          Severity.INFO),
    _code("partition.gpt_header", "The GPT header is damaged.",
          "The GPT header's size field is out of range." + _WHY),
    _code("partition.gpt_crc", "The GPT fails its checksum.",
          "The CRC32 of the GPT header or of its entries array does not match; the backup GPT is read "
          "instead if the primary is bad." + _WHY),
    _code("partition.gpt_entry_size", "The GPT entry size is invalid.",
          "The header's size of a partition entry is below 128 bytes, above 4096 or not a multiple of 8."
          + _WHY),
    _code("partition.gpt_entries", "The GPT entries array is invalid.",
          "The header claims more entries than are read (256), so a partition could hide past them, or puts "
          "the array outside the disk. Rejected even when the backup GPT could be read.", Severity.ERROR),
    _code("partition.gpt_backup_used", "The primary GPT is unusable; its backup was read.",
          "UEFI firmware falls back to the backup GPT in the disk's last sector when the primary fails "
          "its checks; so does this reader, so a damaged primary hides no partition." + _WHY),
    _code("partition.sector_size", "A boot sector gives an impossible sector size.",
          "An NTFS, FAT or exFAT boot sector names a bytes-per-sector value other than 512, 1024, 2048 or "
          "4096; the filesystem is not recognised." + _WHY),
    _code("layout.read_budget", "The disk's layout is too large to read.",
          "Reading the partition table and filesystem signatures reached plugin.os_type.max_read bytes; "
          "the partitions after that point were not probed and could hide a filesystem, so the disk is "
          "rejected.", Severity.ERROR),
)}
