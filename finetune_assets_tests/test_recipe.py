"""finetune_assets.recipe: every recipe validates; a bad recipe stops with a message naming the key to fix."""

from pathlib import Path

import pytest

from finetune_assets.cli import main
from finetune_assets.config import ConfigError
from finetune_assets.recipe import RECIPES_DIR, available_profiles, load_profile


@pytest.mark.parametrize("name", available_profiles())
def test_every_recipe_validates(name):
    profile = load_profile(name)
    assert profile.name == name
    assert (RECIPES_DIR / f"{name}.yaml").read_text().startswith("#"), "a recipe starts with how to run it"


def test_smoke_and_demo_profiles_exist():
    assert {"smoke", "demo"} <= set(available_profiles())
    assert load_profile("smoke").model.source == "tiny"
    assert load_profile("demo").model.source == "smollm2_package"


def test_cli_names_the_missing_base_model(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setenv("FINETUNE_ASSETS_HOME", str(tmp_path))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    recipe = tmp_path / "missing-model.yaml"
    smoke = (RECIPES_DIR / "smoke.yaml").read_text()
    recipe.write_text(smoke.replace("source: tiny", f"source: local\n  path: {tmp_path / 'no-such-model'}"))
    assert main(["demo", "--profile", str(recipe)]) == 1
    err = capsys.readouterr().err
    assert "ModelNotFoundError" in err and "no-such-model" in err


def test_extends_merges_sections_and_keeps_its_own_name(tmp_path):
    (tmp_path / "base.yaml").write_text("name: base\nsft:\n  max_steps: 7\n  learning_rate: 0.5\n")
    (tmp_path / "child.yaml").write_text("extends: base\nsft:\n  max_steps: 3\n")
    profile = load_profile(str(tmp_path / "child.yaml"))
    assert profile.name == "child" and profile.extends == "base"
    assert (profile.sft.max_steps, profile.sft.learning_rate) == (3, 0.5)
    (tmp_path / "loop.yaml").write_text("extends: loop\n")
    with pytest.raises(ConfigError, match="extends itself"):
        load_profile(str(tmp_path / "loop.yaml"))


def test_method_recipes_select_what_they_say():
    assert load_profile("demo-kto").dpo.preference_method == "kto"
    assert load_profile("demo-orpo").dpo.preference_method == "orpo"
    assert load_profile("demo-full").sft.adapter == "full"
    qlora = load_profile("demo-qlora-gpu")
    assert qlora.scaling.use_gpu and {qlora.sft.adapter, qlora.dpo.adapter, qlora.tr.adapter} == {"qlora"}
    assert load_profile("demo-kto").model == load_profile("demo").model  # the rest comes from demo


def test_multi_gpu_recipe_asks_for_zero3_on_gpu_workers():
    from finetune_assets.launch.deepspeed import trainer_deepspeed_arg

    scaling = load_profile("demo-multigpu").scaling
    ds = trainer_deepspeed_arg(scaling.use_gpu, scaling.deepspeed_stage)
    assert scaling.num_workers == 4 and ds["zero_optimization"]["stage"] == 3
    assert trainer_deepspeed_arg(False, scaling.deepspeed_stage) is None  # never on CPU workers
