"""Write the seed corpora: ``python -m fuzz.make_corpus [--out DIR] [TARGET ...]``.

Every seed is made by the test suite's own builders (tests/disk_builders.py, the
``*_images.py`` modules), so by the real tools (qemu-img, qemu-io, sfdisk, sgdisk, mkfs.*,
mkntfs, xorriso, tarfile, zipfile, gzip/xz/bzip2/zstd); nothing is downloaded. Seeds are cut
to their target's ``max_len`` (the headers and tables the parsers read are at the front).
The default directory, fuzz/corpus/, is git-ignored: corpora are rebuilt, never committed.
Run it from the repository root with the project's venv.
"""

from __future__ import annotations

import argparse
import json
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

from importhooks import Pipeline, Settings
from importhooks.plugins import toml_value
from importhooks.settings import PluginSettings, iter_setting_docs
from tests import compression_images, ova_images, zip_images
from tests import disk_builders as b

from .targets import all_targets

DEFAULT_OUT = Path(__file__).resolve().parent / "corpus"
KIB = 1024
Seeds = Iterator[tuple[str, bytes]]


def _read(path: Path) -> bytes:
    return path.read_bytes()


def _qemu(work: Path, kind: str, fmt: str, size: str = "1M", *, written: bool = True) -> bytes:
    """An image made by ``qemu-img create``; ``written``: with data at two places (``qemu-io``)."""
    path = b.qemu_image(work / f"{kind}{'' if written else '-empty'}.img", kind, size)
    if written:
        b.write_clusters(path, fmt, (0, 4096), (512 * KIB, 4096))
    return path.read_bytes()


def _formats(work: Path) -> dict[str, Seeds]:
    def qcow2() -> Seeds:
        yield "v2", _qemu(work, "qcow2_v2", "qcow2")
        yield "v3", _qemu(work, "qcow2_v3", "qcow2")
        yield "backing", _read(b.qcow2_with_backing_file(work / "backing.qcow2"))
        yield "header_backing", b.qcow2_header_with_backing(work)

    def vmdk() -> Seeds:
        yield "sparse", _qemu(work, "vmdk_sparse", "vmdk")
        raw = b.raw_random(work / "stream.src", 64 * KIB)
        yield "stream", _read(b.convert(raw, work / "stream.vmdk", "vmdk", "subformat=streamOptimized"))
        yield "descriptor", _read(b.qemu_image_descriptor(work / "flat.vmdk"))

    def vhd() -> Seeds:
        yield "dynamic", _qemu(work, "vhd_dynamic", "vpc")
        yield "dynamic_empty", _qemu(work, "vhd_dynamic", "vpc", written=False)
        yield "fixed", _read(b.qemu_image(work / "fixed.vhd", "vhd_fixed", "64K"))
        yield "footer", b.vhd_footer(work)

    def simple(kind: str, fmt: str) -> Callable[[], Seeds]:
        def seeds() -> Seeds:  # an empty one too: its tables fit within the target's max_len
            yield kind, _qemu(work, kind, fmt)
            yield f"{kind}_empty", _qemu(work, kind, fmt, written=False)
        return seeds

    def luks() -> Seeds:
        yield "luks1", _read(b.luks_image(work / "disk.luks"))

    def nested() -> Seeds:
        mbr, gpt = b.mbr_disk(work / "nested_mbr.raw"), b.gpt_disk(work / "nested_gpt.raw")
        yield "mbr", _read(mbr)
        yield "gpt", _read(gpt)
        header = _qemu(work, "qcow2_v3", "qcow2")[:512]
        yield "mbr_qcow2", _read(b.overwrite(mbr, 8 * 512, header))
        yield "gpt_qcow2", _read(b.overwrite(gpt, 40 * 512, header))

    corpora: dict[str, Callable[[], Seeds]] = {
        "qcow2": qcow2, "vmdk": vmdk, "vhd": vhd, "vhdx": simple("vhdx", "vhdx"), "vdi": simple("vdi", "vdi"),
        "qed": simple("qed", "qed"), "luks": luks, "nested_headers": nested,
    }
    made = {name: list(seeds()) for name, seeds in corpora.items()}
    detector = [(f"{name}_{label}", data) for name, seeds in made.items() for label, data in seeds]
    detector.append(("iso", _read(b.iso_image(work / "disk.iso"))))
    made["detector"] = detector
    return {name: iter(seeds) for name, seeds in made.items()}


def _guest(work: Path) -> Seeds:
    yield "mbr", _read(b.mbr_disk(work / "guest_mbr.raw"))
    yield "gpt", _read(b.gpt_disk(work / "guest_gpt.raw"))
    for kind in ("ext4", "vfat", "ntfs", "exfat"):
        yield kind, _read(b.filesystem(work / f"{kind}.fs", kind))
    yield "iso", _read(b.iso_image(work / "guest.iso"))
    yield "hybrid_iso", _read(b.hybrid_iso_mbr(work / "hybrid.iso"))


def _containers(work: Path) -> dict[str, Seeds]:
    disk = _read(b.mbr_disk(work / "packed.raw", 64 * KIB))
    vmdk = _read(b.convert(b.mbr_disk(work / "ova.raw", 64 * KIB), work / "ova.vmdk", "vmdk",
                           "subformat=streamOptimized"))

    def ova() -> Seeds:
        yield "pax", _read(ova_images.package(vmdk).write(work / "pax.ova"))
        yield "gnu", _read(ova_images.package(vmdk).write(work / "gnu.ova", fmt=tarfile.GNU_FORMAT))
        yield "ustar_raw", _read(ova_images.package(disk, "raw", name="disk.img", with_manifest=False)
                                 .write(work / "ustar.ova", fmt=tarfile.USTAR_FORMAT))
        yield "sparse", _read(ova_images.ova(work / "sparse.ova", [ova_images.sparse_pax("d.img", 4096)]))

    def ovf() -> Seeds:
        yield "one", ova_images.ovf_descriptor([("disk.vmdk", "vmdk")])
        yield "two", ova_images.ovf_descriptor([("a.vmdk", "vmdk"), ("b.qcow2", "qcow2")], extra_files=("x.iso",),
                                               sizes={"a.vmdk": 512}, compression="gzip")

    def zips() -> Seeds:
        yield "deflate", zip_images.zip_bytes({"disk.img": disk})
        yield "stored", zip_images.zip_bytes({"disk.img": disk}, zipfile.ZIP_STORED)
        yield "bzip2", zip_images.zip_bytes({"disk.img": disk}, zipfile.ZIP_BZIP2)
        yield "zip64", zip_images.zip_bytes({"disk.img": disk}, force_zip64=True)
        yield "streamed", _read(zip_images.zip_streamed(work / "streamed.zip", disk))

    def compression() -> Seeds:
        for kind in ("gzip", "xz", "bzip2", "zstd"):
            yield kind, compression_images.compress(kind, disk)
        yield "gzip_header", compression_images.gzip_with_header(disk, extra=b"ab", name=b"disk.img", comment=b"c")

    return {"ova": ova(), "ovf": ovf(), "zip": zips(), "compression": compression()}


def _settings_seeds() -> Seeds:
    lines: list[str] = []
    tables: dict[str, list[str]] = {}
    for key, default, _doc in iter_setting_docs():
        if default is None or key.startswith("plugin"):
            continue
        section, _, name = key.rpartition(".")
        (tables.setdefault(section, []) if section else lines).append(f"{name} = {toml_value(default)}")
    pipeline = Pipeline.from_settings(Settings(plugins=PluginSettings(entry_points=False)))
    for section, spec in pipeline.registry.declared_options().items():
        tables[f"plugin.{section}"] = [f"{option.name} = {toml_value(option.default)}"
                                       for option in spec.options if option.default is not None]
    text = "\n".join(lines) + "\n" + "".join(f"\n[{name}]\n" + "\n".join(body) + "\n" for name, body in tables.items())
    yield "defaults", text.encode()
    yield "small", b'disk_formats = ["qcow2", "raw"]\nmax_image_size = "10 GiB"\n[timeouts]\ninspect = "30 s"\n'


def _json_seeds(selector: int, documents: list[object]) -> Seeds:
    for index, document in enumerate(documents):
        yield f"doc{index}", bytes([selector]) + json.dumps(document).encode()


def seeds_of(name: str, work: Path) -> Seeds:
    """The seeds of target ``name``, made in ``work``."""
    if name in ("detector", "qcow2", "vmdk", "vhd", "vhdx", "vdi", "qed", "luks", "nested_headers"):
        yield from _formats(work)[name]
    elif name == "os_type":
        yield from _guest(work)
    elif name in ("ova", "ovf", "zip", "compression"):
        yield from _containers(work)[name]
    elif name == "settings":
        yield from _settings_seeds()
    elif name == "import_request":
        yield from _json_seeds(0, [{"method": {"name": "glance-direct"}},
                                   {"method": {"name": "glance-direct"}, "disk_format": "qcow2",
                                    "container_format": "bare", "os_type": "linux"}])
    elif name == "service_body":
        yield from _json_seeds(0, [{"name": "x", "disk_format": "qcow2", "container_format": "bare",
                                    "visibility": "private", "tags": ["a", "a"], "min_disk": 1, "os_type": "linux"},
                                   {"name": "y", "hw_disk_bus": "virtio", "protected": False}])
        yield "sizes", b"\x60" + b"1048576\n1048576"
    else:
        raise KeyError(name)


def main(argv: list[str] | None = None) -> int:
    targets = all_targets()
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write TARGET/SEED files")
    parser.add_argument("targets", nargs="*", choices=[[], *targets], metavar="TARGET", help="default: all")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="importhooks-corpus-") as tmp:
        for name in args.targets or targets:
            out = args.out / name
            out.mkdir(parents=True, exist_ok=True)
            work = Path(tmp, name)
            work.mkdir()
            count = 0
            for label, data in seeds_of(name, work):
                (out / f"seed-{label}").write_bytes(data[: targets[name].max_len])
                count += 1
            print(f"{name}: {count} seeds in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
