"""What this machine can compute fast: bf16 support (CPU flags or CUDA), and how many threads to use.

One probe for training and inference, so both pick the same numerics on the same machine:

    precision, why = resolve_precision("auto")   # ("bf16", "CPU has avx512_bf16") or ("fp32", "...")
    compute_threads(reserved)                    # torch intra-op threads for a training worker

On CPU, bf16 means native bf16 matmuls (AVX512-BF16 or AMX); without them bf16 is emulated and slower than
fp32, so "auto" falls back to fp32 and says why. Measured on the project's 2-core EPYC (avx512_bf16), SmolLM2-135M:
one LoRA step 9.6 s fp32 one thread -> 3.1 s bf16 autocast two threads; greedy decoding of 16 prompts x 48
tokens 60.6 tok/s fp32 one thread -> 228 tok/s bf16 weights two threads (/tmp/gen_bench.py, 2026-12-01).
"""

import functools
import logging
import os
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

Precision = Literal["auto", "bf16", "fp32"]

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def _read_flags(cpuinfo: Path) -> set[str]:
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def cpu_flags() -> set[str]:
    """The CPU feature flags the kernel reports (empty where /proc/cpuinfo does not exist)."""
    return _read_flags(Path("/proc/cpuinfo"))


@functools.cache
def bf16_support() -> tuple[bool, str]:
    """(whether bf16 runs natively here, why): a CUDA GPU with bf16, or a CPU with AVX512-BF16/AMX."""
    import torch

    if torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return True, f"CUDA device {torch.cuda.get_device_name(0)} supports bf16"
        return False, f"CUDA device {torch.cuda.get_device_name(0)} has no bf16"
    found = sorted(cpu_flags() & set(BF16_CPU_FLAGS))
    if found:
        return True, f"CPU has {', '.join(found)}"
    return False, f"CPU lacks {' and '.join(BF16_CPU_FLAGS)} (bf16 would be emulated, slower than fp32)"


def resolve_precision(wanted: Precision) -> tuple[str, str]:
    """("bf16" | "fp32", reason) for a configured precision; "auto" picks bf16 where it is native."""
    if wanted == "fp32":
        return "fp32", "configured fp32"
    supported, why = bf16_support()
    if wanted == "bf16":
        return "bf16", f"configured bf16 ({why})"
    if supported:
        return "bf16", why
    log.info("mixed precision off, training and inference in fp32: %s", why)
    return "fp32", why


def inference_dtype(wanted: Precision = "auto"):
    """torch dtype for evaluation and generation weights: bfloat16 where native, else float32."""
    import torch

    return torch.bfloat16 if resolve_precision(wanted)[0] == "bf16" else torch.float32


def compute_threads(reserved: int | None = None) -> int:
    """Threads for this process's torch ops: ``reserved`` (the CPUs Ray gave a worker) or every core this
    process may run on."""
    if reserved:
        return max(1, int(reserved))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)
