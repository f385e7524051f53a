"""The preference_pairs asset as one call: prompts, the base model's own answers, safety and human pairs.

``build`` picks the prompts from the instruction set's train split, lets the base model answer them (the
rejected side, sampled), takes the chosen side from the references or a teacher, adds the safety and
fairness pairs (phases.data.safety) and human feedback (files, and ``extra_feedback``: live ratings from
phases.data.online_feedback, red-team findings from phases.evaluation.redteam), drops anything that shares
an n-gram with the eval sets, and writes pairs.parquet, binary_feedback.parquet (thumbs up/down, for KTO),
quarantine.jsonl and stats.json to ``out_dir``.
"""

from dataclasses import dataclass
from pathlib import Path

from finetune_assets import io
from finetune_assets.config import PreferencesConfig
from finetune_assets.phases.data import feedback, preferences, safety, seeds, teacher
from finetune_assets.phases.inference.generation import chat_generator, load_for_inference
from finetune_assets.phases.inference.llm import ChatClient

PAIRS_FILE = "pairs.parquet"
BINARY_FILE = "binary_feedback.parquet"


@dataclass(frozen=True)
class PreferenceSet:
    pairs_path: Path
    stats: dict  # also in stats.json
    quarantine: list[dict]  # set-aside feedback lines; also in quarantine.jsonl


def safety_items(cfg: PreferencesConfig, seed: int) -> list[dict]:
    """The packaged safety items the recipe asks for: refusal and look-alike pairs, then fairness pairs."""
    if not cfg.safety:
        return []
    checked = safety.check_disjoint(safety.load_items())
    picked = safety.select_pairs(checked, cfg.safety_max_pairs, cfg.safety_benign_share, seed)
    return picked + safety.fairness_pair_items(cfg.fairness_max_pairs, seed)


def build(
    cfg: PreferencesConfig,
    instruction_rows: list[dict],
    eval_dir: Path,
    out_dir: Path,
    *,
    base_dir: Path,
    decontam_ngram: int,
    system_prompt: str | None = None,
    seed: int = 0,
    feedback_files: list[Path] = (),
    teacher_client: ChatClient | None = None,
    judge_client: ChatClient | None = None,
    extra_feedback: dict[str, feedback.Feedback] | None = None,
) -> PreferenceSet:
    """The preference pairs of ``instruction_rows`` into ``out_dir``; see the module docstring."""
    prompts = preferences.select_prompts(instruction_rows, cfg.max_pairs, seed=seed)
    items = safety_items(cfg, seed)
    model, tokenizer = load_for_inference(base_dir)
    generate = chat_generator(model, tokenizer, cfg.batch_size, temperature=cfg.temperature, seed=seed)
    chosen = None
    if teacher_client is not None:
        chosen = teacher.teacher_answers([p["prompt"] for p in prompts], teacher_client)
    human = feedback.merge(
        [feedback.load_feedback_files(list(feedback_files)), *(extra_feedback or {}).values()]
    )
    built = preferences.assemble(
        prompts,
        generate,
        eval_dir,
        decontam_ngram,
        chosen=chosen,
        judge=judge_client,
        feedback=human,
        safety_items=items,
        system_prompt=system_prompt,
        max_new_tokens=cfg.max_new_tokens,
    )
    built.stats["feedback_sources"] = {name: fb.stats for name, fb in (extra_feedback or {}).items()}
    path = io.write_records_parquet(built.records, out_dir / PAIRS_FILE)
    io.write_records_parquet(built.binary, out_dir / BINARY_FILE)
    seeds.write_quarantine(built.quarantine, out_dir / "quarantine.jsonl")
    io.write_json(built.stats, out_dir / "stats.json")
    return PreferenceSet(path, built.stats, built.quarantine)
