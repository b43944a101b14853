"""Disk-format plugins: detection, the per-format header and table checks, qemu-img, nested headers."""
