"""The instruction_set asset as one call: seed files, the teacher, the corpus extractors, the length statistics.

``build`` imports the seed files (bad lines quarantined), asks the teacher when a client is given, runs
phases.data.instructions.build_instruction_set (extractors, dedup, decontamination against the eval sets,
split by topic) and measures the lengths with the base model's tokenizer and chat template, the text SFT
trains on. Everything lands in ``out_dir``; the asset only logs and describes it.
"""

from dataclasses import dataclass
from pathlib import Path

from finetune_assets import io
from finetune_assets.config import InstructionsConfig
from finetune_assets.phases.data import datastats, evalsets, instructions, seeds, teacher
from finetune_assets.phases.inference.llm import ChatClient

RECORDS_FILE = "instructions.parquet"


@dataclass(frozen=True)
class InstructionSet:
    records_path: Path
    histogram_path: Path
    stats: dict  # also in stats.json
    quarantine: list[dict]  # set-aside seed lines {path, line, reason, raw}; also in quarantine.jsonl


def build(
    cfg: InstructionsConfig,
    docs: list[dict],
    eval_dir: Path,
    out_dir: Path,
    *,
    tokenizer_dir: Path,
    max_length: int,
    seed: int = 0,
    seed_files: list[tuple[Path, str]] = (),
    teacher_client: ChatClient | None = None,
) -> InstructionSet:
    """The instruction set of ``docs`` (dedup_corpus) into ``out_dir``; see the module docstring."""
    seeded = seeds.load_seed_files(list(seed_files), cfg.system_prompt)
    extra, quarantine = dict(seeded.extra), seeded.quarantine
    teacher_stats = None
    if teacher_client is not None:
        usable = evalsets.training_view(docs, evalsets.load_eval_sets(eval_dir)["manifest"])
        made = teacher.teacher_instructions(
            usable, teacher_client, cfg.teacher_max_documents, cfg.system_prompt, seed
        )
        extra["teacher"], teacher_stats = made.records, made.stats
    result = instructions.build_instruction_set(docs, eval_dir, cfg, seed=seed, extra=extra)
    lengths = datastats.length_stats(result.records, datastats.chat_token_counter(tokenizer_dir), max_length)
    histogram = datastats.write_histogram(lengths, out_dir / "lengths.png", max_length, "instruction_set")
    stats = {
        **result.stats,
        "quarantined": len(quarantine),
        "seed_files": seeded.stats,
        "teacher": teacher_stats,
        "lengths": datastats.public(lengths),
    }
    path = io.write_records_parquet(result.records, out_dir / RECORDS_FILE)
    seeds.write_quarantine(quarantine, out_dir / "quarantine.jsonl")
    io.write_json(stats, out_dir / "stats.json")
    return InstructionSet(path, histogram, stats, quarantine)
