"""`--device` and `--dtype` as diffusers users write them, checked before any model loads.

Why checked up front: "cuda" on a machine without CUDA, or float16 on a CPU, fails deep inside
torch minutes into a run (or silently runs slowly); a one-line error naming the valid choices costs
nothing. Images are still drawn from CPU generators (one per image), so a seed gives the same noise
on every device.
"""

from __future__ import annotations

import torch

from erasurelab.errors import ErasureLabError, did_you_mean

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
                                  "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def resolve_device(name: str | torch.device | None) -> torch.device:
    """A torch.device for "cpu", "cuda", "cuda:N" or "mps"; one-line error when it is not available here."""
    if name is None:
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ErasureLabError(f"unknown device {name!r}; use cpu, cuda, cuda:N or mps") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ErasureLabError(f"--device {name}: CUDA is not available on this machine (torch "
                                  f"{torch.__version__}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ErasureLabError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ErasureLabError(f"--device {name}: MPS is not available on this machine; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ErasureLabError(f"unsupported device {name!r}; use cpu, cuda, cuda:N or mps")
    return device


def resolve_dtype(name: str | torch.dtype | None, device: torch.device | str = "cpu") -> torch.dtype | None:
    """A torch dtype for "float32"/"float16"/"bfloat16" (None: as stored); refuses float16 on a CPU."""
    if name is None or isinstance(name, torch.dtype):
        dtype = name
    else:
        key = str(name).lower()
        if key not in DTYPES:
            raise ErasureLabError(f"unknown dtype {name!r}{did_you_mean(key, DTYPES)}; "
                                  "valid: float32, float16, bfloat16")
        dtype = DTYPES[key]
    if dtype == torch.float16 and torch.device(device).type == "cpu":
        raise ErasureLabError("--dtype float16 cannot run on a CPU (half-precision convolutions are not supported "
                              "there); use float32 or bfloat16 on CPU, float16 on CUDA")
    return dtype


def peak_memory_mb(device: torch.device | str = "cpu") -> float:
    """Peak memory of this process on `device` in MiB: CUDA's max_memory_allocated, else peak RSS."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated(device) / (1024 * 1024)
    from erasurelab.runinfo import peak_rss_mb

    return peak_rss_mb()
