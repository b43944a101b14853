#!/usr/bin/env bash
# Set up importhooks on a Debian machine, as root, from a clean checkout; safe to run again.
#
#  1. installs the system packages importhooks and its tests use (apt-get update
#     runs only when a package is missing, and then once);
#  2. creates $REPO/.venv with the machine's python3 (3.11 or newer) if it is missing;
#  3. installs importhooks into it, editable, with the test and docs extras;
#  4. runs the demo (scripts/demo.sh): a benign and a hostile image are audited,
#     and the script fails unless the benign one is accepted and the hostile one rejected.
#
# Environment: PYTHON (default python3) picks the interpreter for a new venv;
# SKIP_DEMO=1 skips step 4.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"
PYTHON="${PYTHON:-python3}"
cd "$REPO"

say() { printf '==> %s\n' "$*"; }
die() { printf 'setup.sh: error: %s\n' "$*" >&2; exit 1; }

# --- 1. system packages -------------------------------------------------------
# qemu-utils: qemu-img (samples, tests); libmagic1, libarchive13: python-magic and
# libarchive-c; the mkfs (udftools: mkudffs), partitioning, compression, ISO (xorriso) and LUKS
# (cryptsetup-bin) tools build test images; zip builds the zip fixtures (tests/zip_images.py);
# genisoimage (mkisofs -udf: UDF-bridge media, also for tests/test_oslo_parity.py), udfclient (writes
# files into a UDF image without mounting) and mtools (the same for FAT) build Windows installation
# media for the os_type tests. fuse3 (libfuse3, which mfusepy loads): tests/test_faults.py serves a
# file whose reads fail with EIO through FUSE (this sandbox has no device-mapper for an 'error' target).
APT_PACKAGES=(qemu-utils libmagic1 libarchive13 e2fsprogs dosfstools ntfs-3g xfsprogs
              fdisk gdisk zstd xz-utils bzip2 xorriso isolinux exfatprogs btrfs-progs cryptsetup-bin udftools
              zip genisoimage udfclient mtools fuse3)
# gcc, python3-dev: pip builds uWSGI from source for .venv-glance (step 3b: the Glance tests).
APT_PACKAGES+=(gcc python3-dev)

# swift-local: tests/swift_harness.py starts a real single-node OpenStack Swift from Debian's packages,
# its four servers (they bring Debian's python3 with the swift modules the harness runs them with) and
# the memcached tempauth keeps its tokens in. The tests start and stop their own servers on free loopback
# ports with their own configuration; nothing here configures or starts a service.
APT_PACKAGES+=(swift-proxy swift-account swift-container swift-object memcached)

# A usable venv has a python that runs pip (a 'python3 -m venv' that failed for
# want of ensurepip leaves one without).
venv_ok() { [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -m pip --version >/dev/null 2>&1; }

if ! venv_ok; then
    if ! command -v "$PYTHON" >/dev/null; then
        [[ "$PYTHON" == python3 ]] || die "$PYTHON not found"
        APT_PACKAGES+=(python3 python3-venv)        # a minimal Debian has no python3 at all
    elif ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        APT_PACKAGES+=(python3-venv)                # Debian's python3 has no ensurepip without it
    fi
fi

# RabbitMQ and PostgreSQL (issue 16): the tests start throwaway instances of both from Debian's binaries
# (tests/servers.py: own directories, loopback ports picked free); Debian's own services must never run.
# Their postinst scripts start (and enable) the services, as do memcached's and Swift's: while any of
# them is being installed, a policy-rc.d that denies every start is in place (only if the host has none),
# and removed when this script exits.
APT_PACKAGES+=(rabbitmq-server postgresql)
servers_missing=0
for package in rabbitmq-server postgresql memcached swift-proxy swift-account swift-container swift-object; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || servers_missing=1
done
if ((servers_missing)) && [[ ! -e /usr/sbin/policy-rc.d ]]; then
    servers_sudo=()
    [[ "$(id -u)" == 0 ]] || servers_sudo=(sudo)
    printf '#!/bin/sh\n# written by importhooks scripts/setup.sh during its install: no service starts\nexit 101\n' \
        | "${servers_sudo[@]}" tee /usr/sbin/policy-rc.d >/dev/null
    "${servers_sudo[@]}" chmod 755 /usr/sbin/policy-rc.d
    trap '"${servers_sudo[@]}" rm -f /usr/sbin/policy-rc.d' EXIT
fi

missing=()
for package in "${APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$package")
    fi
done

if ((${#missing[@]})); then
    say "installing system packages: ${missing[*]}"
    command -v apt-get >/dev/null || die "apt-get not found: install ${missing[*]} by hand"
    SUDO=()
    if [[ "$(id -u)" != 0 ]]; then
        command -v sudo >/dev/null || die "not root and no sudo: install ${missing[*]} by hand"
        SUDO=(sudo)
    fi
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -q
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    say "system packages: all present"
fi

# --- 2. virtual environment ---------------------------------------------------
if venv_ok; then
    say "virtual environment: $VENV (exists)"
else
    command -v "$PYTHON" >/dev/null || die "$PYTHON not found"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$PYTHON is $("$PYTHON" -V 2>&1); importhooks needs Python 3.11 or newer"
    say "creating virtual environment $VENV with $("$PYTHON" -V 2>&1)"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
fi

# --- 3. the package -----------------------------------------------------------
say "installing importhooks (editable, extras test and docs)"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[test,docs]"
say "installing the reference image service (examples/image_service, editable)"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-build-isolation --no-deps -e examples/image_service
"$VENV/bin/importhooks" --help >/dev/null || die "the importhooks command does not run"

# --- 3b. the Glance environment (issue 13: tests/test_glance_*.py, benchmarks/bench_glance.py) ---
# .venv-glance holds a real OpenStack Glance 33 from the package index, uWSGI (Glance 33 runs only
# as a WSGI app), python-glanceclient (the tests drive Glance with the real glance CLI) and this
# checkout, editable, so Glance loads the tree's importhooks plugin. Skipped when its stamp (a
# hash of the pins and pyproject.toml) is current and the environment imports.
GLANCE_VENV="$REPO/.venv-glance"
GLANCE_PINS=(glance==33.0.0 uWSGI==2.0.31 python-glanceclient==4.13.0)
glance_hash="$(printf '%s\n' "${GLANCE_PINS[@]}" | cat - pyproject.toml | sha256sum | cut -d' ' -f1)"
glance_stamp="$GLANCE_VENV/.importhooks-setup"
if [[ -f "$glance_stamp" && "$(cat "$glance_stamp")" == "$glance_hash" ]] \
        && "$GLANCE_VENV/bin/python" -c 'import glance, importhooks.integrations.glance' >/dev/null 2>&1; then
    say "Glance environment: $GLANCE_VENV (up to date)"
else
    say "building the Glance environment $GLANCE_VENV (glance 33, uWSGI, python-glanceclient)"
    if ! "$GLANCE_VENV/bin/python" -m pip --version >/dev/null 2>&1; then
        rm -rf "$GLANCE_VENV"
        "$PYTHON" -m venv "$GLANCE_VENV"
    fi
    "$GLANCE_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${GLANCE_PINS[@]}"
    "$GLANCE_VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e .
    "$GLANCE_VENV/bin/python" -c 'import glance, importhooks.integrations.glance' \
        || die "the Glance environment does not load the importhooks plugin"
    printf '%s\n' "$glance_hash" > "$glance_stamp"
fi

# --- 4. demo ------------------------------------------------------------------
if [[ "${SKIP_DEMO:-0}" == 1 ]]; then
    say "demo skipped (SKIP_DEMO=1)"
else
    bash "$REPO/scripts/demo.sh"
fi
say "setup done; run scripts/test.sh to test"
