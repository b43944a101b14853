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
          "An MBR or EBR entry has an invalid status byte (the entry is still read: some reader may use it), "
          "zero sectors (ignored), a second extended partition (its chain is read too, as Linux does), or an "
          "EBR lacks its 0x55AA signature." + _WHY),
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
          "A hybrid MBR beside a GPT, as hybrid installer ISOs have, or an MBR without the protective entry "
          "(then firmware, Linux and Windows use the MBR). Both tables are read and every partition either "
          "lists is checked.", Severity.INFO),
    _code("partition.tables_disagree", "The disk's MBR and GPT list different partitions.",
          "An MBR entry beside a GPT is not a mirror of a GPT partition (same start and size): readers that "
          "follow the MBR see a partition that readers of the GPT do not. Both are checked." + _WHY),
    _code("partition.gpt_sector_sizes", "The disk has GPTs for two sector sizes.",
          "GPT headers at LBA 1 of both 512- and 4096-byte sectors: a disk presented with either sector size "
          "shows a different table. Both are read and every partition either lists is checked." + _WHY),
    _code("partition.mbr_sector_size", "The MBR points at filesystems for two sector sizes.",
          "Read as a disk of 4096-byte logical sectors reads it (4Kn), the MBR's entries point at "
          "filesystems that the usual 512-byte reading does not: a disk presented with either sector size "
          "shows different partitions. Both readings are checked." + _WHY),
    _code("partition.gpt_backup_differs", "The backup GPT lists partitions the primary does not.",
          "The backup GPT (at the primary's alternate LBA or in the last sector) is valid but lists "
          "partitions the primary does not; tools that read the backup see them. They are checked too."
          + _WHY),
    _code("partition.whole_disk_filesystem", "A filesystem starts at sector 0 beside a partition table.",
          "A filesystem signature at byte 0 of a disk that also has a partition table (not an ISO 9660 or "
          "UDF hybrid): a reader of the whole disk (a superfloppy) sees that filesystem, a reader of the "
          "table sees the partitions. Both are checked." + _WHY),
    _code("media.directories", "Installation media hold too many directories to check.",
          "Looking up the Windows boot and setup files of an ISO 9660, Joliet, UDF, FAT or exFAT tree needed "
          "more directory reads than allowed (16 per tree), an ISO 9660 path table is larger than 1 MiB, or "
          "a FAT or exFAT directory is longer than 256 clusters: a file past that point could be missed, so "
          "the disk is rejected.", Severity.ERROR),
    _code("media.iso_block_size", "An ISO 9660 volume gives an impossible block size.",
          "An ISO 9660 volume descriptor names a logical block size other than 512, 1024 or 2048 bytes; its "
          "tree is not read, so Windows setup files in it could be missed. Rejected.", Severity.ERROR),
    _code("media.fat_unreadable", "A FAT or exFAT volume could not be read.",
          "A FAT or exFAT boot sector gives an impossible geometry (sector or cluster size, no reserved "
          "sectors or FATs), so Windows setup files on it could be missed. Rejected.", Severity.ERROR),
    _code("media.udf_unreadable", "A UDF volume could not be read.",
          "A UDF volume is recognised but its anchor, logical volume (in the main or the reserve volume "
          "descriptor sequence), partition maps (only physical and sparable ones are read, not virtual or "
          "metadata partitions) or file set descriptor could not be read, so Windows setup files in it "
          "could be missed. Rejected.", Severity.ERROR),
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
