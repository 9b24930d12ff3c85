#!/usr/bin/env bash
# hpcsweep's GPU check in one command, for a lent GPU machine that reaches no network:
#
#     bash benchmarks/gpu_wheels.sh     # here first, with PyPI: fills .gpu-carry/ (wheels, the JPEG CIFAR-10)
#     bash benchmarks/gpu.sh            # there, in the checkout, with .gpu-carry/ carried along
#
# Without an NVIDIA GPU it says so in one line and exits 1, at once. With one, in about 6 minutes
# on one GPU (at most GPU_BUDGET_S, 450 s by default, whatever hangs), it:
#   1. installs into that machine's python3 (PYTHON) what hpcsweep needs and it lacks, from
#      .gpu-carry/wheels only; torch, lightning and the rest of its torch stack are held at the
#      versions it has; hpcsweep itself goes in editable, without its pinned dependencies;
#   2. reports the driver, torch, CUDA and the GPU;
#   3. builds the official-layout CIFAR-10 archive from the JPEG copy and prepares it, then runs
#      `hpcsweep doctor` (the GPU, this torch build's kernels for it, the prepared data);
#   4. runs every test marked gpu;
#   5. runs benchmarks/gpu_throughput.py: images/s against a plain loop, MFU, resnet9 to 94%.
# Each part has its own time limit, a failed part does not stop the next, and the script exits 1
# if any failed. It changes that python3 (packages go into it): meant for a lent, throwaway machine.
# Logs, the tests' JUnit XML, gpu-throughput.{json,md} and summary.{json,md} go
# to $OUT when it is set (the device tool brings that folder back), else to benchmarks/results/.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

no_gpu() {
    echo "no CUDA GPU: $*" >&2
    exit 1
}

# First, and without Python: a machine with no GPU hears so within a second
command -v nvidia-smi >/dev/null 2>&1 || no_gpu "nvidia-smi not found; run this on a machine with an NVIDIA GPU and its driver"
GPUS=$(nvidia-smi -L 2>/dev/null | grep '^GPU ') || no_gpu "nvidia-smi lists no GPU"

export ROOT PYTHON=${PYTHON:-python3}
export CARRY="$ROOT/.gpu-carry"
export RESULTS=${OUT:-$ROOT/benchmarks/results}
export WORK TMPDIR
WORK=$(mktemp -d "${TMPDIR:-/tmp}/hpcsweep-gpu.XXXXXX")
TMPDIR=$WORK # the tests' and the benchmark's temporary folders go with it
BUDGET_S=${GPU_BUDGET_S:-450}
STARTED=$SECONDS
PARTS="$RESULTS/parts.tsv"
# pip: no index (there is no network), nothing asked, no refusal of a distribution's python (PEP 668)
export PIP_NO_INDEX=1 PIP_FIND_LINKS="$CARRY/wheels" PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore
mkdir -p "$RESULTS/logs"
: >"$PARTS"
cd "$ROOT" || exit 1

# pip from the carried wheel: the same pip whatever the machine has, or has not
pip_install() {
    local pip=("$CARRY"/wheels/pip-*.whl)
    "$PYTHON" "${pip[0]}/pip" install --quiet "$@"
}

# The machine's torch stack, as constraints: what hpcsweep's wheels need must fit around it
held_versions() {
    "$PYTHON" -c '
import importlib.metadata as metadata
held = ("torch", "torchvision", "torchaudio", "triton", "lightning", "pytorch-lightning", "torchmetrics",
        "lightning-utilities", "numpy", "pandas", "matplotlib", "pillow")
versions = {}
for dist in metadata.distributions():  # in import order: the first of a name is the one imported
    name = (dist.metadata["Name"] or "").lower().replace("_", "-")
    if name in held or name.startswith("nvidia-"):
        versions.setdefault(name, dist.version)
print("\n".join(f"{name}=={version}" for name, version in versions.items()))
'
}

install() {
    [ -d "$CARRY/wheels" ] || { echo "no $CARRY/wheels: run benchmarks/gpu_wheels.sh first and carry .gpu-carry" >&2; return 1; }
    "$PYTHON" --version
    held_versions >"$WORK/constraints.txt" && cat "$WORK/constraints.txt"
    pip_install --constraint "$WORK/constraints.txt" -r "$CARRY/requirements.txt" &&
        pip_install --no-deps -r "$CARRY/no-deps.txt" &&
        pip_install --no-deps --ignore-requires-python -e "$ROOT" &&
        "$PYTHON" -m hpcsweep --version
}

cuda() {
    nvidia-smi --query-gpu=name,driver_version,memory.total,mig.mode.current --format=csv
    "$PYTHON" - <<'EOF'
import sys

import torch

print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
      f"kernels for {' '.join(torch.cuda.get_arch_list())}")
if not torch.cuda.is_available():
    sys.exit("no CUDA GPU: this torch sees none")
print(f"NCCL {'.'.join(map(str, torch.cuda.nccl.version()))}, bf16 {torch.cuda.is_bf16_supported()}")
for index in range(torch.cuda.device_count()):
    properties = torch.cuda.get_device_properties(index)
    print(f"cuda:{index} {properties.name}, sm_{properties.major}{properties.minor}, "
          f"{properties.total_memory / 2**30:.1f} GiB")
torch.ones(1, device="cuda").add_(1)  # a kernel really runs
EOF
}

doctor() {
    "$PYTHON" -m hpcsweep doctor -s accelerator=gpu -s data.prepared_dir="$WORK/prepared" \
        -s tracking.uri="sqlite:///$WORK/doctor.db"
}

data() {
    "$PYTHON" "$CARRY/make_cifar10_archive.py" "$CARRY/cifar10-jpeg.tar.gz" "$WORK/cifar-10-python.tar.gz" &&
        "$PYTHON" -m hpcsweep download --archive "$WORK/cifar-10-python.tar.gz" --out "$WORK/raw" &&
        "$PYTHON" -m hpcsweep prepare --raw "$WORK/raw" --out "$WORK/prepared"
}

gpu_tests() {
    local files
    mapfile -t files < <(grep -l 'pytest.mark.gpu' tests/test_*.py)
    # collection imports every file named: one that cannot import here must not stop the others
    "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider --continue-on-collection-errors \
        --junitxml="$RESULTS/gpu-tests.xml" "${files[@]}"
}

throughput() {
    "$PYTHON" benchmarks/gpu_throughput.py --prepared "$WORK/prepared" --out "$RESULTS"
}

export -f pip_install held_versions install cuda doctor data gpu_tests throughput

# One part: at most `limit` seconds (less if the budget is nearly spent), its output on the screen
# and in logs/NAME.log, one line in parts.tsv; the next part runs whatever this one did
part() {
    local name=$1 limit=$2 left=$((BUDGET_S - (SECONDS - STARTED))) began=$SECONDS status
    ((limit > left)) && limit=$left
    if ((limit < 15)); then
        printf '%s\tskipped: the %s s budget was spent\t0\n' "$name" "$BUDGET_S" >>"$PARTS"
        return 1
    fi
    echo "=== $name (at most $limit s)"
    timeout --kill-after=10 "$limit" bash -c "$name" 2>&1 | tee "$RESULTS/logs/$name.log"
    status=${PIPESTATUS[0]}
    case $status in
    0) printf '%s\tpassed\t%s\n' "$name" $((SECONDS - began)) >>"$PARTS" ;;
    124 | 137) printf '%s\tFAILED: over its %s s\t%s\n' "$name" "$limit" $((SECONDS - began)) >>"$PARTS" ;;
    *) printf '%s\tFAILED: exit %s\t%s\n' "$name" "$status" $((SECONDS - began)) >>"$PARTS" ;;
    esac
    return "$status"
}

# summary.md and summary.json: the GPU, each part's outcome, the throughput figures
summarise() {
    GPUS="$GPUS" "$PYTHON" - "$PARTS" "$RESULTS" <<'EOF'
import json
import os
import sys
from pathlib import Path

parts_file, results = Path(sys.argv[1]), Path(sys.argv[2])
parts = [dict(zip(("part", "outcome", "seconds"), line.split("\t"))) for line in parts_file.read_text().splitlines()]
throughput = results / "gpu-throughput.json"
summary = {"gpus": os.environ["GPUS"].splitlines(), "parts": parts,
           "throughput": json.loads(throughput.read_text()) if throughput.is_file() else None}
(results / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
lines = ["# benchmarks/gpu.sh", "", *[f"- {gpu}" for gpu in summary["gpus"]], "",
         "| part | outcome | seconds |", "| --- | --- | --- |",
         *[f"| {p['part']} | {p['outcome']} | {p['seconds']} |" for p in parts], ""]
markdown = results / "gpu-throughput.md"
(results / "summary.md").write_text("\n".join(lines) + ("\n" + markdown.read_text() if markdown.is_file() else ""))
EOF
    cat "$RESULTS/summary.md"
}

echo "$GPUS"
if part install 150 && part cuda 60; then
    part data 150 && part doctor 30
    part gpu_tests 170
    [ -d "$WORK/prepared" ] && part throughput 300
fi
summarise
rm -rf "$WORK"
failed=$(grep -c $'\tFAILED\|\tskipped' "$PARTS")
echo "gpu.sh: $(wc -l <"$PARTS") parts, $failed failed or skipped, $((SECONDS - STARTED)) s; results in $RESULTS"
[ "$failed" -eq 0 ]
