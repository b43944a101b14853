#!/usr/bin/env python3
"""Build the demo's sample images with qemu-img: one benign, one hostile.

    python scripts/make_samples.py [--clean] [OUTPUT_DIR]     (default: samples)

* ``benign.qcow2``: an empty, self-contained 64 MiB qcow2; importhooks accepts it.
* ``hostile.qcow2``: a 64 MiB qcow2 whose backing file is ``/etc/passwd``
  (``qemu-img create -u``: the backing file is named, never opened). A hypervisor
  or ``qemu-img convert`` following it would read a host file (OSSA-2024-001);
  importhooks rejects it with ``qcow2.backing_file``.

The file names say what each sample should get: ``benign*`` accept, ``hostile*`` reject
(``scripts/check_demo.py`` relies on that).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

SAMPLES: dict[str, list[str]] = {
    "benign.qcow2": ["create", "-f", "qcow2", "{path}", "64M"],
    "hostile.qcow2": ["create", "-f", "qcow2", "-u", "-b", "/etc/passwd", "-F", "raw", "{path}", "64M"],
}


def make_samples(output: Path, *, clean: bool = False) -> list[Path]:
    """Write the samples into ``output`` (created if needed) and return their paths."""
    qemu_img = shutil.which("qemu-img")
    if qemu_img is None:
        raise SystemExit("make_samples.py: qemu-img not found (Debian package qemu-utils; run scripts/setup.sh)")
    output.mkdir(parents=True, exist_ok=True)
    if clean:  # samples/ is generated and git-ignored: leave nothing else in it for 'audit samples/*'
        for stale in output.iterdir():
            if stale.is_file() or stale.is_symlink():
                stale.unlink()
    made = []
    for name, args in SAMPLES.items():
        path = output / name
        path.unlink(missing_ok=True)
        command = [qemu_img, *(arg.format(path=path) for arg in args)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"make_samples.py: {' '.join(command)} failed: {done.stderr.strip()}")
        made.append(path)
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the demo's benign and hostile sample images.")
    parser.add_argument("output", nargs="?", type=Path, default=Path("samples"),
                        help="directory to write the samples into (default: samples)")
    parser.add_argument("--clean", action="store_true",
                        help="first remove every file already in the directory")
    args = parser.parse_args(argv)
    for path in make_samples(args.output, clean=args.clean):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
