"""`precision: auto`: the fastest precision a device trains correctly in.

bf16 needs Ampere (compute capability 8.0) or newer; older CUDA GPUs (Pascal, Volta, Turing) get
fp16 with loss scaling; the CPU trains in fp32, where autocast would save no time. A config keeps
`auto` (its hash, its grid point), and the run records what was used as `precision_used`.
"""

from __future__ import annotations

from hpcsweep.hardware.gpus import gpu_of_rank, supports_bf16, visible_gpus
from hpcsweep.ranks import local_rank


def auto_precision(device_type: str, capability: tuple[int, int] | None) -> str:
    """The precision `auto` means on a device of `device_type` ("cuda", "cpu", ...) with that
    compute capability (CUDA only)."""
    if device_type != "cuda":
        return "32-true"
    return "bf16-mixed" if capability and supports_bf16(capability) else "16-mixed"


def precision_for(accelerator: str, requested: str) -> str:
    """What `requested` means on the device this process will train on (its local rank's GPU)."""
    if requested != "auto":
        return requested
    gpus = visible_gpus() if accelerator != "cpu" else []
    if not gpus:
        return auto_precision("cpu", None)
    return auto_precision("cuda", gpu_of_rank(gpus, local_rank()).capability)
