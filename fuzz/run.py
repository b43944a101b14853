"""The libFuzzer entry point: ``python -m fuzz.run TARGET [libFuzzer options] [corpus dirs]``.

``python -m fuzz.run --list`` names the targets. importhooks, its built-in plugins and the
reference service are imported under atheris' coverage instrumentation first, then the
target's factory builds what it needs once, and libFuzzer calls its one-input function with
every input it makes. The target's dictionary (``fuzz/dicts``) and ``-max_len`` are passed
unless given; scripts/fuzz.sh adds the time, the artifact directory and the memory limit;
see fuzz/README.md.

``python -m fuzz.run --all [libFuzzer options]`` runs every target in turn, each in a child
forked after the (slow) instrumented imports, its temporary files in a directory removed
when it ends (libFuzzer leaves by ``exit()``, past Python's clean-up); it prints one
``fuzz.run: TARGET exit N`` line per target and exits 1 if any child failed. The test suite
uses it for its short run of every target.
"""

from __future__ import annotations

import importlib
import logging
import os
import pkgutil
import shutil
import sys
import tempfile

import atheris

from .targets import Target, all_targets

#: Packages whose code is instrumented for coverage: the code under test.
INSTRUMENTED = ("importhooks", "importhooks_plugins", "importhooks_image_service")
#: Subpackages left out: integrations import their host (Glance), which no fuzz target runs.
SKIPPED = ("importhooks.integrations",)


def _import_all() -> None:
    """Import every module of :data:`INSTRUMENTED` (helpers plugins load lazily included)."""
    for name in INSTRUMENTED:
        package = importlib.import_module(name)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{name}."):
            if not info.name.endswith("__main__") and not info.name.startswith(SKIPPED):
                importlib.import_module(info.name)


def _fuzz(target: Target, options: list[str]) -> None:
    """Build ``target`` and hand it to libFuzzer; does not return (libFuzzer exits the process).

    The target's dictionary and ``max_len`` are added unless ``options`` give their own.
    """
    if not any(option.startswith("-dict=") for option in options):
        options = [*options, f"-dict={target.dict_path}"]
    if not any(option.startswith("-max_len=") for option in options):
        options = [*options, f"-max_len={target.max_len}"]
    one = target.factory()

    def test_one_input(data: bytes) -> None:
        one(data)

    # libFuzzer runs argv[0] again to minimize a crash: the command that fuzzes this target.
    atheris.Setup([f"{sys.executable} -m fuzz.run {target.name}", *options], test_one_input)
    atheris.Fuzz()


def _all(targets: dict[str, Target], options: list[str]) -> int:
    failed = 0
    for target in targets.values():
        sys.stdout.flush()
        sys.stderr.flush()
        scratch = tempfile.mkdtemp(prefix="importhooks-fuzz-")  # the child's temporary files, removed here
        pid = os.fork()
        if pid == 0:
            try:
                tempfile.tempdir = scratch
                _fuzz(target, options)
            finally:
                os._exit(70)  # Fuzz() returned or raised before libFuzzer started
        status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        shutil.rmtree(scratch, ignore_errors=True)
        print(f"fuzz.run: {target.name} exit {status}", file=sys.stderr, flush=True)
        failed += status != 0
    return 1 if failed else 0


def main(argv: list[str]) -> None:
    logging.disable(logging.CRITICAL)  # oslo.utils and the pipeline log every odd input
    with atheris.instrument_imports(include=list(INSTRUMENTED)):
        _import_all()
    targets = all_targets()
    if len(argv) >= 2 and argv[1] == "--all":
        raise SystemExit(_all(targets, argv[2:]))
    if len(argv) < 2 or argv[1] not in targets:
        if len(argv) >= 2 and argv[1] not in ("--list", "-h", "--help"):
            print(f"no fuzz target {argv[1]!r}", file=sys.stderr)
        for target in targets.values():
            print(f"{target.name:16} {target.family:11} {target.summary}")
        raise SystemExit(0 if len(argv) >= 2 and argv[1] == "--list" else 2)
    _fuzz(targets[argv[1]], argv[2:])


if __name__ == "__main__":
    main(sys.argv)
