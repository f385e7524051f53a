"""finetune_assets: an LLM fine-tuning factory expressed as Dagster software-defined assets."""

__version__ = "0.1.0"
