"""Guest plugins: what the disk holds (partition tables, filesystems) and the ``os_type`` it proves."""
