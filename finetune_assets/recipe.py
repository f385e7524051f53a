"""Recipes: a profile's YAML (recipes/<profile>.yaml, or a path), merged over the recipe it extends and
validated into one typed Profile (the sections of finetune_assets.config).

A misspelt key or a value of the wrong type stops the run with a ConfigError naming the key and the file."""

from pathlib import Path

import yaml
from pydantic import ValidationError, model_validator

from finetune_assets.config import (
    AutomationConfig,
    ConfigError,
    ConfigSection,
    CorpusConfig,
    DedupConfig,
    EvalConfig,
    EvalSetsConfig,
    GuardrailsConfig,
    InstructionsConfig,
    ModelConfig,
    PreferencesConfig,
    RetrievalConfig,
    ScalingConfig,
    ServingConfig,
    TrainConfig,
    check_continuable,
)
from finetune_assets.config_sweep import SweepConfig

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


class Profile(ConfigSection):
    name: str
    extends: str | None = None  # the recipe this one starts from (load_profile merges it in)
    seed: int = 0
    corpus: CorpusConfig = CorpusConfig()
    dedup: DedupConfig = DedupConfig()
    eval_sets: EvalSetsConfig = EvalSetsConfig()
    instructions: InstructionsConfig = InstructionsConfig()
    preferences: PreferencesConfig = PreferencesConfig()
    model: ModelConfig = ModelConfig()
    sft: TrainConfig = TrainConfig()
    dpo: TrainConfig = TrainConfig(learning_rate=5e-5, max_steps=20)
    tr: TrainConfig = TrainConfig(max_steps=20)
    scaling: ScalingConfig = ScalingConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    eval: EvalConfig = EvalConfig()
    guardrails: GuardrailsConfig = GuardrailsConfig()
    automation: AutomationConfig = AutomationConfig()
    serving: ServingConfig = ServingConfig()
    sweep: SweepConfig = SweepConfig()

    @model_validator(mode="after")
    def _sweep_space_names_stage_settings(self):
        unknown = sorted(set(self.sweep.space) - set(TrainConfig.model_fields))
        if unknown:
            raise ValueError(f"sweep.space names settings a training stage does not have: {unknown}")
        return self

    @model_validator(mode="after")
    def _virtual_tokens_only_last(self):
        for stage in ("sft", "dpo"):
            check_continuable(stage, getattr(self, stage))
        return self

    @model_validator(mode="after")
    def _qlora_needs_gpu(self):
        for stage in ("sft", "dpo", "tr"):
            if getattr(self, stage).adapter == "qlora" and not self.scaling.use_gpu:
                raise ValueError(
                    f"{stage}.adapter is 'qlora', which loads the base in 4-bit with bitsandbytes on a CUDA GPU: "
                    "set scaling.use_gpu: true (on a GPU machine) or use adapter: lora"
                )
        return self


def available_profiles(recipes_dir: Path = RECIPES_DIR) -> list[str]:
    return sorted(p.stem for p in recipes_dir.glob("*.yaml"))


def load_profile(name_or_path: str, recipes_dir: Path = RECIPES_DIR) -> Profile:
    """Load and validate a recipe by profile name (recipes/<name>.yaml) or by file path.

    A recipe may start from another with ``extends: <profile name or path>``: its sections are merged into
    that recipe's, key by key (nested mappings merge, anything else replaces)."""
    raw, path = _read_recipe(name_or_path, recipes_dir, seen=())
    raw.setdefault("name", path.stem)  # an extended recipe's name is not inherited
    return validate_profile(raw, origin=str(path))


def recipe_path(name_or_path: str) -> Path:
    """The file a profile name or path loads from (absolute): what another recipe can extend from anywhere."""
    return _recipe_path(name_or_path, RECIPES_DIR).resolve()


def _recipe_path(name_or_path: str, recipes_dir: Path) -> Path:
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = recipes_dir / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"recipe '{name_or_path}' not found at {path}; available profiles: "
            f"{', '.join(available_profiles(recipes_dir)) or 'none'}"
        )
    return path


def _read_recipe(name_or_path: str, recipes_dir: Path, seen: tuple) -> tuple[dict, Path]:
    path = _recipe_path(name_or_path, recipes_dir)
    if path.resolve() in seen:
        raise ConfigError(f"recipe {path} extends itself (chain: {' -> '.join(str(p) for p in seen)})")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"recipe {path} is not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"recipe {path} must be a mapping of config sections, got {type(raw).__name__}")
    parent = raw.get("extends")
    if not parent:
        return raw, path
    base, _ = _read_recipe(parent, path.parent, (*seen, path.resolve()))
    base.pop("name", None)
    return _deep_merge(base, raw), path


def _deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def validate_profile(raw: dict, origin: str = "config") -> Profile:
    try:
        return Profile.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in err.errors()
        )
        raise ConfigError(f"invalid config in {origin}: {problems}") from err
