"""Policy plugins: what the requester may claim, size limits, protected properties, checksums, the log notifier."""
