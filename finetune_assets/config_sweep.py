"""The recipe's ``sweep:`` section: a hyperparameter search over one training stage's settings (Ray Tune,
Optuna, ASHA; launch.ray_tune runs it, the hpo_study asset and `finetune-assets sweep` start it)."""

from typing import Literal

from pydantic import Field, model_validator

from finetune_assets.config_base import ConfigSection


class SearchDimension(ConfigSection):
    """One setting's range: exactly one of loguniform [low, high], uniform [low, high], choice [values]."""

    loguniform: tuple[float, float] | None = None
    uniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None  # low inclusive, high exclusive
    choice: list[float | int | str] | None = None

    @model_validator(mode="after")
    def _one_kind(self):
        kinds = [k for k in ("loguniform", "uniform", "randint", "choice") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(
                f"give exactly one of loguniform, uniform, randint, choice (got {kinds or 'none'})"
            )
        bounds = self.loguniform or self.uniform or self.randint
        if bounds is not None and not bounds[0] < bounds[1]:
            raise ValueError(f"{kinds[0]}: low must be below high, got {list(bounds)}")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError("loguniform: low must be > 0")
        return self


class SweepConfig(ConfigSection):
    """Trials are real training runs of ``stage`` (sft: the INST model) with ``space``'s settings over the
    stage's own, each ``max_steps`` long and evaluated every ``eval_steps`` on the validation split (never
    on eval_sets); ASHA stops the unpromising after ``grace_period`` evaluations."""

    stage: Literal["sft"] = "sft"
    trials: int = Field(8, ge=1)
    max_concurrent: int = Field(1, ge=1)  # trials at once (each takes the CPUs of one training worker)
    metric: str = "eval_loss"
    mode: Literal["min", "max"] = "min"
    max_steps: int | None = Field(None, ge=1)  # per trial; None: the stage's max_steps
    eval_steps: int = Field(4, ge=1)
    grace_period: int = Field(2, ge=1)  # ASHA: evaluations every trial gets
    reduction_factor: int = Field(2, ge=2)
    seed: int = 0
    space: dict[str, SearchDimension] = {
        "learning_rate": SearchDimension(loguniform=(1e-5, 1e-3)),
        "lora_r": SearchDimension(choice=[8, 16, 32]),
        "warmup_ratio": SearchDimension(uniform=(0.0, 0.1)),
    }
