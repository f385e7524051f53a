"""finetune_assets: an LLM fine-tuning factory expressed as Dagster software-defined assets."""

__version__ = "0.1.0"

import os as _os

# What a script that loads models wants before torch/transformers are imported: one BLAS thread per process,
# nothing fetched from the Hugging Face hub, no progress bars or advisory warnings. A user's own values win.
QUIET_OFFLINE_ENV = {
    "OMP_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}


def quiet_offline_env() -> None:
    """Set QUIET_OFFLINE_ENV's defaults in os.environ (the benchmarks call it first)."""
    for key, value in QUIET_OFFLINE_ENV.items():
        _os.environ.setdefault(key, value)
