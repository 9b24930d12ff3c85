"""`precision: auto`: the fastest precision a device trains correctly in.

bf16 needs Ampere (compute capability 8.0) or newer; older CUDA GPUs (Pascal, Volta, Turing) get
fp16 with loss scaling; the CPU trains in fp32, where autocast would save no time. A config keeps
`auto` (its hash, its grid point), and the run records what was used as `precision_used`.
"""

from __future__ import annotations

BF16_MIN_CAPABILITY = (8, 0)


def auto_precision(device_type: str, capability: tuple[int, int] | None) -> str:
    """The precision `auto` means on a device of `device_type` ("cuda", "cpu", ...) with that
    compute capability (CUDA only)."""
    if device_type != "cuda":
        return "32-true"
    return "bf16-mixed" if capability and capability >= BF16_MIN_CAPABILITY else "16-mixed"


def resolve_precision(requested: str, device_type: str, capability: tuple[int, int] | None) -> str:
    return auto_precision(device_type, capability) if requested == "auto" else requested


def precision_for(accelerator: str, requested: str) -> str:
    """What `requested` means on the device this process will train on (its local rank's GPU)."""
    import torch

    from hpcsweep.ranks import local_rank

    if requested != "auto":
        return requested
    on_cuda = accelerator != "cpu" and torch.cuda.is_available()
    if not on_cuda:
        return auto_precision("cpu", None)
    return auto_precision("cuda", torch.cuda.get_device_capability(local_rank() % torch.cuda.device_count()))
