#!/usr/bin/env bash
# Fill .gpu-carry/ on THIS machine (it reaches PyPI) with what benchmarks/gpu.sh needs on a lent
# GPU machine that reaches no network.
#
# That machine's python3 already has torch, lightning, torchvision, torchmetrics, pandas and
# matplotlib, at a Python version only known there (3.10 to 3.13), and no mlflow. Only the
# checkout and a few ignored folders travel to it (64 MiB in all; ../shared does not), so this
# script gathers:
#   wheels/           the client side of MLflow (mlflow-skinny: tracking, autologging, system
#                     metrics, the SQLite store: sqlalchemy, alembic, cryptography), click, nvidia-ml-py,
#                     psutil, pytest + pytest-xdist (conftest.py marks tests with xdist_group),
#                     and pip + setuptools (to install hpcsweep itself), with their dependencies,
#                     for every CPython from 3.10 to 3.13 on manylinux x86_64
#   requirements.txt  what gpu.sh installs from wheels/ with their dependencies (pip keeps what the
#                     machine already has)
#   no-deps.txt       what it installs without them (mlflow-skinny, databricks-sdk)
#   cifar10-jpeg.tar.gz + make_cifar10_archive.py   the 19 MB public JPEG copy of CIFAR-10 and
#                     the script that turns it into the official archive layout, there
# Then it checks that every Python version resolves what gpu.sh asks for from wheels/ alone, prints
# the sizes, and fails if the carried folder and the tracked tree would not fit well within 64 MiB. Usage (from anywhere; the pip is the project venv's):
#
#     bash benchmarks/gpu_wheels.sh        # then: run `bash benchmarks/gpu.sh` with carry [".gpu-carry"]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CARRY="$ROOT/.gpu-carry"
SHARED_DATA=${HPCSWEEP_SHARED_DATA:-$ROOT/../shared/data}
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
PYTHON_VERSIONS=(3.10 3.11 3.12 3.13)
# torch's CUDA 13 builds need glibc 2.28, so a machine that runs them takes these wheels too
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64)
CARRY_LIMIT_MIB=64
HEADROOM_MIB=8 # for the checkout growing
MLFLOW=mlflow-skinny==3.17.2

# Ranges, not pyproject.toml's pins: a version the machine already has is kept (pip replacing a
# package of its own can break it), the wheels here are the newest each Python from 3.10 runs.
# mlflow-skinny's own requirements are listed here too, and it is installed without them
# (no-deps.txt), so that databricks-sdk comes without its: `import mlflow` needs the `databricks`
# namespace, while the credentials it brings (google-auth) serve only Databricks workspaces.
# cryptography is the full mlflow's requirement that the SQLite store imports.
requirements() {
    local mlflow_wheel=$1
    printf '%s\n' "sqlalchemy>=2.0,<2.2" "alembic>=1.13,<2" "cryptography>=43,<51" "click>=8.1,<9" \
        "nvidia-ml-py>=12" "psutil>=5.9" "pyyaml>=5.1" "pytest>=8" "pytest-xdist>=3.5"
    requires_dist "$mlflow_wheel" | grep -v '^databricks-sdk'
}

# The Requires-Dist lines of a wheel, less those of optional extras
requires_dist() {
    "$PYTHON" -c '
import sys, zipfile
from email.parser import HeaderParser

with zipfile.ZipFile(sys.argv[1]) as wheel:
    name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    metadata = HeaderParser().parsestr(wheel.read(name).decode())
print("\n".join(r for r in metadata.get_all("Requires-Dist") if "extra ==" not in r))
' "$1"
}

# `pip COMMAND ...` (download, or install --dry-run) for CPython `version` on the machine's platforms
pip_for() {
    local version=$1 command=$2 platform
    shift 2
    local platform_args=()
    for platform in "${PLATFORMS[@]}"; do platform_args+=(--platform "$platform"); done
    "$PYTHON" -m pip "$command" --quiet --only-binary=:all: --python-version "$version" --implementation cp \
        "${platform_args[@]}" "$@"
}

download_wheels() {
    local into=$1 version
    pip_for 3.10 download --no-deps --dest "$into/wheels" "$MLFLOW"
    {
        echo "$MLFLOW"
        requires_dist "$into"/wheels/mlflow_skinny-*.whl | grep '^databricks-sdk'
    } >"$into/no-deps.txt"
    pip_for 3.10 download --no-deps --dest "$into/wheels" -r "$into/no-deps.txt"
    requirements "$into"/wheels/mlflow_skinny-*.whl >"$into/requirements.txt"
    for version in "${PYTHON_VERSIONS[@]}"; do
        echo "wheels for CPython $version ..."
        pip_for "$version" download --dest "$into/wheels" -r "$into/requirements.txt" pip "setuptools>=68"
    done
    prefer_pure "$into/wheels" sqlalchemy
    one_abi3_wheel "$into/wheels"
    # lightning requires PyYAML, so the machine has it: its four compiled wheels would cost 3 MB
    rm "$into"/wheels/pyyaml-*.whl
}

# Replace a package's compiled wheels (one per Python version) by the pure-Python wheel of the same
# release: sqlalchemy's C speed-ups cost 14 MB here and matter to no training.
prefer_pure() {
    local wheels=$1 name=$2 compiled release
    for compiled in "$wheels/$name"-*-cp3*.whl; do
        release=$(basename "$compiled" | cut -d- -f2)
        "$PYTHON" -m pip download --quiet --only-binary=:all: --platform any --no-deps --dest "$wheels" \
            "$name==$release"
        rm "$compiled"
    done
}

# A stable-ABI (abi3) wheel built for CPython 3.X runs on every later one: of a release's abi3
# wheels keep the oldest (cryptography ships two of 4.7 MB)
one_abi3_wheel() {
    local wheels=$1 wheel release kept
    for wheel in "$wheels"/*-abi3-*.whl; do
        release=$(basename "$wheel" | cut -d- -f1,2)
        kept=$(printf '%s\n' "$wheels/$release"-cp3*-abi3-*.whl | sort -V | head -1)
        [ "$wheel" = "$kept" ] || rm "$wheel"
    done
}

# What gpu.sh will ask of wheels/, resolved from it alone for every Python version (pyyaml, whose
# wheels are left out, is taken to be there, as on the machine)
check_complete() {
    local wheels=$1 version offline=(--dry-run --quiet --ignore-installed --no-index --find-links "$1")
    for version in "${PYTHON_VERSIONS[@]}"; do
        if ! pip_for "$version" install "${offline[@]}" -r <(grep -v '^pyyaml' "$CARRY/requirements.txt") \
            pip "setuptools>=68" || ! pip_for "$version" install "${offline[@]}" --no-deps -r "$CARRY/no-deps.txt"; then
            echo "$wheels lacks something CPython $version needs" >&2
            exit 1
        fi
    done
    echo "wheels complete for CPython ${PYTHON_VERSIONS[*]}"
}

mib() { du -scb "$@" | awk 'END { printf "%.1f", $1 / 1048576 }'; }

check_size() {
    local carry_mib tree_mib total_mib limit_mib=$((CARRY_LIMIT_MIB - HEADROOM_MIB)) wheels=("$CARRY"/wheels/*.whl)
    carry_mib=$(mib "$CARRY")
    tree_mib=$(cd "$ROOT" && git ls-files -z | xargs -0 du -cb 2>/dev/null | awk 'END { printf "%.1f", $1 / 1048576 }')
    total_mib=$(awk -v a="$carry_mib" -v b="$tree_mib" 'BEGIN { printf "%.1f", a + b }')
    echo "carried .gpu-carry: $carry_mib MiB (wheels $(mib "$CARRY/wheels") MiB in ${#wheels[@]}" \
        "files, data $(mib "$CARRY/cifar10-jpeg.tar.gz") MiB); tracked tree $tree_mib MiB; together $total_mib MiB" \
        "of the $CARRY_LIMIT_MIB MiB a device call carries"
    if awk -v total="$total_mib" -v limit="$limit_mib" 'BEGIN { exit !(total > limit) }'; then
        echo "too large: keep it under $limit_mib MiB (drop a Python version or a package)" >&2
        exit 1
    fi
}

main() {
    if [ ! -f "$SHARED_DATA/cifar10-jpeg.tar.gz" ] || [ ! -f "$SHARED_DATA/make_cifar10_archive.py" ]; then
        echo "no CIFAR-10 JPEG copy in $SHARED_DATA (set HPCSWEEP_SHARED_DATA)" >&2
        exit 1
    fi
    # built beside the final folder and renamed into place: an interrupted run leaves the old one whole
    local building="$CARRY.building"
    rm -rf "$building"
    mkdir -p "$building/wheels"
    download_wheels "$building"
    cp "$SHARED_DATA/cifar10-jpeg.tar.gz" "$SHARED_DATA/make_cifar10_archive.py" "$building/"
    rm -rf "$CARRY"
    mv "$building" "$CARRY"
    check_complete "$CARRY/wheels"
    check_size
}

main "$@"
