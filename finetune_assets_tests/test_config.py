"""finetune_assets.config: each section validates its values and names the key to fix."""

from pathlib import Path

import pytest

from finetune_assets.cli import main
from finetune_assets.config import ConfigError, InstructionsConfig
from finetune_assets.recipe import load_profile


def test_misspelt_key_is_named(tmp_path: Path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("name: bad\nsft:\n  max_stepz: 3\n")
    with pytest.raises(ConfigError, match=r"sft\.max_stepz"):
        load_profile(str(recipe))


def test_wrong_type_and_range_are_named(tmp_path: Path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("name: bad\ndedup:\n  threshold: 1.5\nsft:\n  learning_rate: fast\n")
    with pytest.raises(ConfigError) as err:
        load_profile(str(recipe))
    assert "dedup.threshold" in str(err.value) and "sft.learning_rate" in str(err.value)


def test_rpo_weight_with_another_preference_method_is_an_error(tmp_path: Path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("name: bad\ndpo:\n  preference_method: kto\n  sft_loss_weight: 1.0\n")
    with pytest.raises(ConfigError, match="sft_loss_weight"):
        load_profile(str(recipe))


def test_model_path_required_for_local_source(tmp_path: Path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("name: bad\nmodel:\n  source: local\n")
    with pytest.raises(ConfigError, match="model.path is required"):
        load_profile(str(recipe))


def test_unknown_profile_lists_available():
    with pytest.raises(ConfigError, match="available profiles: .*smoke"):
        load_profile("no-such-profile")


def test_cli_reports_invalid_config_and_exits_2(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setenv("FINETUNE_ASSETS_HOME", str(tmp_path))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("name: bad\neval:\n  batch_size: 0\n")
    assert main(["demo", "--profile", str(recipe)]) == 2
    assert "eval.batch_size" in capsys.readouterr().err


def test_generator_shares_must_name_running_generators():
    with pytest.raises(ValueError, match=r"names \['module_lookup'\]"):
        InstructionsConfig(generators=["api"], generator_shares={"module_lookup": 1.0})
    with pytest.raises(ValueError, match="sum to more than 0"):
        InstructionsConfig(generators=["api"], generator_shares={"api": 0.0})
