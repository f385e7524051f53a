"""Training: the trl methods, their run artifacts, GRPO and base-model resolution."""
