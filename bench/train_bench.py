"""Training benchmark: steady-state tokens/s of this project's SFT path against plain trl with its defaults.

Run it (one command, from the repo root after `bash scripts/setup.sh`):

    .venv/bin/python bench/train_bench.py                  # or: make bench-train (tiny random model, ~3 min)
    .venv/bin/python bench/train_bench.py --model smollm2  # the demo's model (~10 min on 2 cores)

What is compared, on the same model and rows and the same stage settings (the ``--profile`` recipe's ``sft``
section: demo's batch, max_length, LoRA r16 on all linear layers, learning rate), in one run:
- ``plain``: trl's SFTTrainer as a plain script runs it, in a fresh Python process: one torch thread, fp32,
  padded random batches (trl's default collator, no packing), LoRA via peft_config. Only gradient
  checkpointing is turned off (trl's default on, 5-40x slower on CPU: leaving it on would flatter the ratio).
- ``project``: launch.ray_train.run_training("sft", ...) exactly as the inst_model asset calls it: embedded
  loopback Ray (started once, timed on its own), a TorchTrainer worker given every core
  (scaling.cpus_per_worker unset) with as many torch threads, bf16 autocast where the CPU has native bf16
  (phases.inference.hardware), padding-free packing where the model's probe passes (else length-grouped batches).
The ratio project / plain of steady tokens/s is the figure to read (issue 10's target: >= 2.5x).

Steady state, by differencing two run lengths. Each path trains twice: ``--warmup`` steps (n1) and
``--steps`` steps (n2), same seed. The summary's ``train_runtime_s`` is the time of trainer.train() and
``tokens_seen`` its non-padding input tokens, so

    steady tokens/s = (tokens(n2) - tokens(n1)) / (train_runtime(n2) - train_runtime(n1))

is the rate of steps n1+1..n2 alone: warm-up and every fixed cost inside train() cancel out. The runs
alternate (plain n1, project n1, plain n2, project n2) so a change in the box's load affects both alike;
``--repeat N`` runs N such cycles and reports medians and every cycle's ratio. Packed rows carry more real
tokens per step than padded ones: tokens/s (real tokens only) is the comparable figure, not steps/s.

MFU (model FLOPs utilisation) = achieved training FLOP/s / the machine's measured matmul peak. Training FLOPs
per real token for LoRA on a frozen base: 4 x (matmul parameters, lm_head included: 2 forward + 2 for the
input gradients; the adapter's own weight gradients are < 1 %) + 12 x layers x hidden x mean context
(attention scores and values, forward and backward); full fine-tuning adds 2 x params for weight gradients.
The peak is the best of square bf16 and fp32 matmuls (2048^3) on every core, measured in a child process in
this run; both paths are reported against the same peak.

Start-up overhead per call = wall time of the whole call - tokens(call) / steady tokens/s. ray.init is
reported on its own: an asset run pays it once per process, not per call. Peak memory: ru_maxrss of the plain
child; VmHWM of the Ray train worker, polled every 0.2 s among this process's descendants.

Padding share, no training: the rows are tokenized as trl 1.16 does and batched at random, padded to the
longest row of each batch: real share = non-padding tokens / (batch x padded length), over 50 shuffles.

Data: instruction rows made the way the instruction_set asset makes them (phases.data.instructions' generators and
record shape) from ``--docs`` library pages of the Python documentation (python3-doc), evenly spread.

Timings on shared machines are noisy: read the ratio, measured in the same run, not the absolute numbers.
"""

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import finetune_assets

finetune_assets.quiet_offline_env()  # before torch/transformers load

from finetune_assets.config import ModelConfig, TinyModelConfig, TrainConfig, default_home
from finetune_assets.phases.data import (
    corpus,
    demo_seed,
    instructions,
)
from finetune_assets.phases.text import sampling
from finetune_assets.recipe import load_profile

MIB = 2**20
TARGET_RATIO = 2.5  # issue 10: the project path at >= 2.5x plain trl
DEFAULT_STEPS = {"tiny": (10, 110), "smollm2": (2, 6)}  # (--warmup, --steps)
SAMPLE_EVERY_S = 0.2


# ---------------------------------------------------------------------------------------------------- data
def instruction_rows(count: int, docs: int, profile) -> tuple[list[dict], list[str]]:
    """``count`` instruction rows ({id, messages, ...}) from ``docs`` library pages of the Python docs, and
    the pages' texts (the tiny model trains its tokenizer on them)."""
    sources = demo_seed.find_python_docs()
    if sources is None:
        raise SystemExit("python3-doc is not installed: run `bash scripts/setup.sh` first")
    files = sampling.spread(sorted((sources / "library").glob("*.rst.txt")), docs)
    cfg = profile.instructions
    rows, texts = [], []
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        rel = path.relative_to(sources).as_posix().removesuffix(".txt")
        doc = corpus.make_document("bench", rel, text)
        texts.append(text)
        for name, generator in instructions.GENERATORS.items():
            for prompt, answer in generator(doc):
                rows.append(instructions._record(doc, name, prompt, answer, cfg))
    if len(rows) < count:
        raise SystemExit(f"only {len(rows)} instruction rows from {docs} pages; raise --docs or lower --rows")
    return sampling.spread(rows, count), texts


def token_lengths(tokenizer, rows: list[dict], max_length: int) -> tuple[list[int], int]:
    """Per-row training lengths as trl 1.16's SFTTrainer prepares them (assistant_only_loss, keep_start
    truncation, fully masked rows dropped); returns (lengths, rows dropped)."""
    lengths, dropped = [], 0
    for row in rows:
        out = tokenizer.apply_chat_template(
            row["messages"], tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        ids, mask = out["input_ids"][:max_length], out["assistant_masks"][:max_length]
        if 1 in mask:
            lengths.append(len(ids))
        else:
            dropped += 1
    return lengths, dropped


def padding_share(lengths: list[int], batch_size: int, max_length: int, shuffles: int = 50, seed: int = 0):
    """Share of real (non-padding) tokens in random batches padded to their longest row, and at max_length."""
    rng = random.Random(seed)
    real = sum(lengths)
    shares = []
    for _ in range(shuffles):
        order = list(lengths)
        rng.shuffle(order)
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        shares.append(real / sum(len(b) * max(b) for b in batches))
    dynamic = sum(shares) / len(shares)
    return {
        "rows": len(lengths),
        "mean_tokens_per_row": round(real / len(lengths), 1),
        "rows_at_max_length": sum(n >= max_length for n in lengths),
        "real_share_dynamic_padding": round(dynamic, 3),
        "real_share_at_max_length": round(real / (len(lengths) * max_length), 3),
        "packing_speedup_bound": round(1 / dynamic, 2),
    }


# ----------------------------------------------------------------------------------------------- children
def _child(spec_path: Path) -> None:
    """Child process entry: ``prepare`` (resolve the base model), ``plain`` (trl as a plain script runs it)
    or ``peak`` (the machine's matmul peak on every core)."""
    spec = json.loads(spec_path.read_text())
    started = time.perf_counter()
    import torch

    out: dict = {}
    if spec["op"] == "prepare":
        from finetune_assets.phases.training import models

        cfg = ModelConfig.model_validate(spec["model"])
        out["info"] = models.resolve_base_model(cfg, Path(spec["out_dir"]), corpus_texts=spec["texts"])
    elif spec["op"] == "peak":
        torch.set_num_threads(os.cpu_count() or 1)
        out["peak"] = matmul_peak()
    else:
        torch.set_num_threads(1)  # a plain script on a machine whose OMP_NUM_THREADS is 1
        import peft  # noqa: F401  - imported here only to time imports apart from training
        import trl  # noqa: F401

        out["import_s"] = time.perf_counter() - started
        cfg = TrainConfig.model_validate(spec["cfg"])
        rows = json.loads(Path(spec["rows"]).read_text())
        call = time.perf_counter()
        out["summary"] = plain_trl_sft(Path(spec["base_dir"]), rows, cfg)
        out["sft_call_s"] = time.perf_counter() - call
    out["maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MIB
    Path(spec["result"]).write_text(json.dumps(out, default=str))


def plain_trl_sft(base_dir: Path, rows: list[dict], cfg: TrainConfig) -> dict:
    """The baseline: SFTTrainer with trl's defaults (fp32, padded random batches, no packing) on one thread,
    the same LoRA and stage settings; gradient checkpointing off (see the module docstring)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    with tempfile.TemporaryDirectory() as scratch:
        args = SFTConfig(
            output_dir=scratch, max_steps=cfg.max_steps, learning_rate=cfg.learning_rate,
            per_device_train_batch_size=cfg.per_device_batch_size, max_length=cfg.max_length, seed=cfg.seed,
            assistant_only_loss=True, use_cpu=True, bf16=False, gradient_checkpointing=False,
            activation_checkpointing=False, save_strategy="no", report_to="none", logging_steps=1,
            disable_tqdm=True, include_num_input_tokens_seen="non_padding",
        )  # fmt: skip
        lora = LoraConfig(
            r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
            target_modules=cfg.lora_target_modules, task_type="CAUSAL_LM",
        )  # fmt: skip
        dataset = Dataset.from_list([{"messages": r["messages"]} for r in rows])
        trainer = SFTTrainer(
            model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=lora
        )
        output = trainer.train()
    return {
        "steps": int(trainer.state.global_step),
        "tokens_seen": int(trainer.state.num_input_tokens_seen),
        "train_runtime_s": float(output.metrics["train_runtime"]),
        "precision": "fp32",
        "torch_threads": torch.get_num_threads(),
        "packing": False,
    }


def matmul_peak(size: int = 2048, repeats: int = 5) -> dict:
    """Best achieved FLOP/s of square matmuls in bf16 and fp32 on this process's threads."""
    import torch

    out = {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        a @ b  # warm-up: kernel selection, page faults
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t)
        out[f"{name}_flops"] = 2 * size**3 / best
    out["peak_flops"] = max(out["bf16_flops"], out["fp32_flops"])
    out["threads"] = torch.get_num_threads()
    return out


def train_flops_per_token(model_dir: Path, mean_context: float, adapter: str) -> float:
    """Training FLOPs per real token (see the module docstring): 4 x matmul params + attention, for LoRA."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(model_dir)
    d, layers, inter, vocab = c.hidden_size, c.num_hidden_layers, c.intermediate_size, c.vocab_size
    kv = d * getattr(c, "num_key_value_heads", c.num_attention_heads) // c.num_attention_heads
    per_layer = d * d * 2 + d * kv * 2 + 3 * d * inter  # q, o; k, v; gate, up, down
    matmul_params = layers * per_layer + vocab * d  # lm_head
    per_token = 4 * matmul_params + 12 * layers * d * mean_context
    if adapter == "full":
        per_token += 2 * matmul_params
    return float(per_token)


def run_child(spec: dict, work: Path, name: str) -> tuple[dict, float]:
    """Run ``spec`` in a fresh Python process; return (its result, wall seconds of the whole process)."""
    spec = {**spec, "result": str(work / f"{name}.result.json")}
    spec_path = work / f"{name}.spec.json"
    spec_path.write_text(json.dumps(spec))
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--_child", str(spec_path)],
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{name} child failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(Path(spec["result"]).read_text()), wall


# ------------------------------------------------------------------------------------------------- memory
def _hwm_and_rss(pid: int) -> tuple[int, int]:
    """(VmHWM, VmRSS) in bytes from /proc (Linux); (0, 0) when the process is gone."""
    hwm = rss = 0
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
                elif line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return hwm, rss


class DescendantMemory:
    """Polls this process's descendants: per-process peak (VmHWM) and the peak of their summed RSS; and
    this process's own peak USS (private memory: its RSS also counts shared object-store pages it maps)."""

    def __init__(self, every_s: float = SAMPLE_EVERY_S):
        self.every_s = every_s
        self.peak_hwm: dict[int, tuple[int, str]] = {}
        self.peak_total_rss = 0
        self.peak_own_uss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        names: dict[int, str] = {}
        while True:
            total = 0
            try:
                self.peak_own_uss = max(self.peak_own_uss, me.memory_full_info().uss)
                children = me.children(recursive=True)
            except psutil.Error:
                children = []
            for proc in children:
                pid = proc.pid
                name = names.get(pid, "")
                if not name.startswith("ray::") or name.startswith("ray::IDLE"):  # titles change once
                    try:
                        names[pid] = " ".join(proc.cmdline())[:80].strip() or proc.name()
                    except psutil.Error:
                        continue
                hwm, rss = _hwm_and_rss(pid)
                total += rss
                peak = max(hwm, self.peak_hwm.get(pid, (0, ""))[0])
                self.peak_hwm[pid] = (peak, names[pid])
            self.peak_total_rss = max(self.peak_total_rss, total)
            if self._stop.wait(self.every_s):
                return

    def ray_worker_peak(self) -> int:
        """The largest peak of any Ray worker process (ray::...)."""
        return max((hwm for hwm, name in self.peak_hwm.values() if name.startswith("ray::")), default=0)

    def train_worker_peak(self) -> int:
        workers = [hwm for hwm, name in self.peak_hwm.values() if "RayTrainWorker" in name]
        return max(workers) if workers else max((hwm for hwm, _ in self.peak_hwm.values()), default=0)


# ------------------------------------------------------------------------------------------------- figures
def steady(first: dict, second: dict) -> dict:
    """Steady-state rate from two runs of the same path: steps n1+1..n2 only."""
    dt = second["train_runtime_s"] - first["train_runtime_s"]
    dtok = second["tokens_seen"] - first["tokens_seen"]
    dsteps = second["steps"] - first["steps"]
    if dt <= 0 or dsteps <= 0:
        raise SystemExit(
            f"the {second['steps']}-step run was not slower than the {first['steps']}-step one: raise --steps"
        )
    return {"tokens_per_s": dtok / dt, "s_per_step": dt / dsteps, "tokens": dtok, "steps": dsteps}


def call_figures(summary: dict, wall_s: float, rate: float) -> dict:
    """One call: wall time, start-up overhead (wall - its tokens at the steady rate) and its parts."""
    tokens, runtime = summary["tokens_seen"], summary["train_runtime_s"]
    return {
        "steps": summary["steps"],
        "tokens": tokens,
        "train_runtime_s": round(runtime, 2),
        "wall_s": round(wall_s, 2),
        "overhead_s": round(wall_s - tokens / rate, 2),
        "outside_train_s": round(wall_s - runtime, 2),
        # the same for both lengths by construction: the intercept of runtime against tokens
        "warmup_in_train_s": round(runtime - tokens / rate, 2),
    }


def _mib(n_bytes: float) -> float:
    return round(n_bytes / MIB, 1)


# ---------------------------------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("tiny", "smollm2"), default="tiny")
    parser.add_argument(
        "--model-dir", type=Path, help="use this HF model folder instead of resolving --model"
    )
    parser.add_argument("--profile", default="demo", help="recipe whose sft section sets the training")
    parser.add_argument("--steps", type=int, help="steps of the long run (n2); default tiny 110, smollm2 6")
    parser.add_argument("--warmup", type=int, help="steps of the short run (n1); default tiny 10, smollm2 2")
    parser.add_argument("--rows", type=int, default=320, help="instruction rows to train on")
    parser.add_argument("--docs", type=int, default=40, help="library pages the rows are made from")
    parser.add_argument("--work-dir", type=Path, help="keep outputs here (default: a temp dir, removed)")
    parser.add_argument(
        "--checkpoint-steps", type=int, help="override the recipe's checkpoint_steps (0: no checkpoints)"
    )
    parser.add_argument("--repeat", type=int, default=1, help="alternating cycles; medians are reported")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--_child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._child:
        _child(args._child)
        return {}

    n1, n2 = DEFAULT_STEPS[args.model]
    n1, n2 = args.warmup or n1, args.steps or n2
    if args.repeat < 1:
        raise SystemExit("--repeat must be >= 1")
    if not 0 < n1 < n2:
        raise SystemExit(f"need 0 < --warmup < --steps, got {n1} and {n2}")
    profile = load_profile(args.profile)
    train_cfg = profile.sft
    if args.checkpoint_steps is not None:
        train_cfg = train_cfg.model_copy(update={"checkpoint_steps": args.checkpoint_steps})
    rows, texts = instruction_rows(args.rows, args.docs, profile)

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="fa-train-bench-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _run(args, profile, train_cfg, rows, texts, work, n1, n2)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)


def _run(args, profile, train_cfg: TrainConfig, rows, texts, work: Path, n1: int, n2: int) -> dict:
    from finetune_assets.launch.ray_cluster import ensure_ray, shutdown_ray
    from finetune_assets.launch.ray_train import run_training

    # 1. the base model, resolved as base_checkpoint does, in a child (the driver never loads a model)
    if args.model_dir:
        model_dir = args.model_dir.resolve()
    else:
        source = "tiny" if args.model == "tiny" else "smollm2_package"
        cache = work if args.model == "tiny" else default_home()  # the SmolLM2 conversion is kept (30 s)
        model_dir = (cache / "bench" / f"{args.model}-base").resolve()
        spec = {"op": "prepare", "model": ModelConfig(source=source, tiny=TinyModelConfig()).model_dump()}
        run_child({**spec, "out_dir": str(model_dir), "texts": texts}, work, "prepare")
    rows_path = work / "rows.json"
    rows_path.write_text(json.dumps(rows))

    # 2. the machine's matmul peak, before anything else runs (the MFU denominator)
    peak = run_child({"op": "peak"}, work, "peak")[0]["peak"]

    # 3. Ray, once (an asset run pays this once per process)
    import ray

    started_here = not ray.is_initialized()
    temp = Path(f"/tmp/fa-bench-{os.getpid()}")
    t0 = time.perf_counter()
    ensure_ray(temp_dir=temp)
    ray_init_s = time.perf_counter() - t0

    def plain(steps: int, cycle: int) -> tuple[dict, float, dict]:
        cfg = train_cfg.model_copy(update={"max_steps": steps})
        name = f"plain-{cycle}-{steps}"
        spec = {"op": "plain", "cfg": cfg.model_dump(), "base_dir": str(model_dir), "rows": str(rows_path)}
        result, wall = run_child({**spec, "out_dir": str(work / name)}, work, name)
        return result.pop("summary"), wall, result

    def on_ray(steps: int, cycle: int) -> tuple[dict, float, DescendantMemory]:
        cfg = train_cfg.model_copy(update={"max_steps": steps})
        kwargs = {"base_dir": model_dir, "train_rows": rows, "eval_rows": [], "cfg": cfg}
        with DescendantMemory() as memory:
            t = time.perf_counter()
            summary = run_training(
                "sft",
                {**kwargs, "out_dir": work / f"ray-{cycle}-{steps}"},
                profile.scaling,
                work / "ray_results",
            )
            wall = time.perf_counter() - t
        return summary, wall, memory

    # 4. alternate the paths so a change in the machine's load hits both alike
    cycles = []
    try:
        for cycle in range(args.repeat):
            d1, r1 = plain(n1, cycle), on_ray(n1, cycle)
            d2, r2 = plain(n2, cycle), on_ray(n2, cycle)
            cycles.append({"plain": (d1, d2), "project": (r1, r2), "load": os.getloadavg()[0]})
        driver_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    finally:
        if started_here:
            shutdown_ray()
            shutil.rmtree(temp, ignore_errors=True)

    rates = {
        path: [steady(c[path][0][0], c[path][1][0])["tokens_per_s"] for c in cycles]
        for path in ("plain", "project")
    }
    ratios = [r / d for r, d in zip(rates["project"], rates["plain"], strict=True)]
    memories = [m for c in cycles for _, _, m in c["project"]]
    ray_procs = max(memories, key=lambda m: m.peak_total_rss).peak_hwm.values()

    def path_result(path: str) -> dict:
        first = cycles[0][path]  # the first cycle's calls: its first ray call also imports ray.train
        rate = statistics.median(rates[path])
        steps_per_s = [steady(c[path][0][0], c[path][1][0])["s_per_step"] for c in cycles]
        return {
            "steady_tokens_per_s": round(rate, 1),
            "steady_tokens_per_s_per_cycle": [round(x, 1) for x in rates[path]],
            "steady_s_per_step": round(statistics.median(steps_per_s), 4),
            "calls": [call_figures(summary, wall, rate) for summary, wall, _ in first],
        }

    result = {
        "model": args.model if not args.model_dir else str(model_dir),
        "num_params": _num_params(model_dir),
        "profile": profile.name,
        "rows": len(rows),
        "train": {
            k: getattr(train_cfg, k)
            for k in ("per_device_batch_size", "max_length", "lora_r", "lora_target_modules", "learning_rate")
        },
        "num_workers": profile.scaling.num_workers,
        "steps": [n1, n2],
        "repeat": args.repeat,
        "packing": train_cfg.packing,
        # resumable checkpoints saved inside the steady window (under Ray also reported to its storage)
        "checkpoint_steps": train_cfg.checkpoint_steps,
        "checkpoints_in_steady_window": (
            n2 // train_cfg.checkpoint_steps - n1 // train_cfg.checkpoint_steps
            if train_cfg.checkpoint_steps
            else 0
        ),
        "plain": {
            **path_result("plain"),
            "import_s": round(cycles[0]["plain"][0][2]["import_s"], 2),
            "peak_rss_mib": round(max(x[2]["maxrss_mib"] for c in cycles for x in c["plain"]), 1),
            "settings": _settings(cycles[0]["plain"][1][0]),
        },
        "project": {
            **path_result("project"),
            "settings": _settings(cycles[0]["project"][1][0]),
            "ray_init_s": round(ray_init_s, 2),
            "peak_rss_mib": {
                "train_worker": _mib(max(m.train_worker_peak() for m in memories)),
                "all_ray_processes": _mib(max(m.peak_total_rss for m in memories)),
                "driver": _mib(driver_peak),
            },
            "ray_processes_peak_mib": [[name, _mib(hwm)] for hwm, name in sorted(ray_procs, reverse=True)],
        },
        "steady_ratio": round(statistics.median(ratios), 3),
        "steady_ratio_per_cycle": [round(x, 3) for x in ratios],
        "target_ratio": TARGET_RATIO,
        # 1-minute load average after each cycle: above the core count, other work shared the cores
        "load_average": [round(c["load"], 2) for c in cycles],
        "cpu_count": os.cpu_count(),
    }
    result["meets_target"] = result["steady_ratio"] >= TARGET_RATIO

    # 5. padding (after the driver's peak was read: this loads a tokenizer here)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    lengths, dropped = token_lengths(tokenizer, rows, train_cfg.max_length)
    result["padding"] = {
        **padding_share(lengths, train_cfg.per_device_batch_size, train_cfg.max_length),
        "rows_dropped_fully_masked": dropped,
    }
    per_token = train_flops_per_token(
        model_dir, result["padding"]["mean_tokens_per_row"] / 2, train_cfg.adapter
    )
    result["mfu"] = {
        "matmul_peak": {k: round(v / 1e9, 1) if k.endswith("flops") else v for k, v in peak.items()},
        "train_flops_per_token": per_token,
        **{
            path: round(result[path]["steady_tokens_per_s"] * per_token / peak["peak_flops"], 4)
            for path in ("plain", "project")
        },
    }
    _print(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


def _settings(summary: dict) -> dict:
    """How a path actually trained, from its summary: precision, torch threads, packing."""
    return {k: summary.get(k) for k in ("precision", "torch_threads", "packing")}


def _num_params(model_dir: Path) -> int | None:
    from finetune_assets.phases.training.models import num_params_from_safetensors

    try:
        return num_params_from_safetensors(model_dir)
    except Exception:  # noqa: BLE001 - a figure for the table only
        return None


def _print(r: dict) -> None:
    t, d, y = r["train"], r["plain"], r["project"]
    n1, n2 = r["steps"]
    params = f"{r['num_params'] / 1e6:.2f}M params" if r["num_params"] else "?"
    print(
        f"model {r['model']} ({params}), {r['rows']} rows, batch {t['per_device_batch_size']}, max_length "
        f"{t['max_length']}, LoRA r{t['lora_r']}; runs of {n1} and {n2} steps (x{r['repeat']}): "
        f"steady state = steps {n1 + 1}-{n2}"
    )
    print(f"plain trl: {d['settings']}; this project: {y['settings']}")
    print(f"{'':34} {'plain trl':>14} {'this project':>19}")
    m = r["mfu"]
    rows = [
        ("steady tokens/s (real tokens)", d["steady_tokens_per_s"], y["steady_tokens_per_s"], "{:.1f}"),
        ("steady s/step", d["steady_s_per_step"], y["steady_s_per_step"], "{:.3f}"),
        ("MFU (of the measured peak)", m["plain"], m["project"], "{:.2%}"),
    ]
    for i, label in ((0, f"{n1}-step"), (1, f"{n2}-step")):
        dc, yc = d["calls"][i], y["calls"][i]
        rows += [
            (f"{label} call: wall s", dc["wall_s"], yc["wall_s"], "{:.1f}"),
            ("  start-up overhead s", dc["overhead_s"], yc["overhead_s"], "{:.1f}"),
        ]
    rows += [
        ("peak RSS training process MiB", d["peak_rss_mib"], y["peak_rss_mib"]["train_worker"], "{:.0f}"),
        ("peak RSS all Ray processes MiB", None, y["peak_rss_mib"]["all_ray_processes"], "{:.0f}"),
    ]
    for label, a, b, fmt in rows:
        a_s = fmt.format(a) if a is not None else "-"
        print(f"{label:34} {a_s:>14} {fmt.format(b):>19}")
    mark = "meets" if r["meets_target"] else "BELOW"
    per_cycle = f" (per cycle: {r['steady_ratio_per_cycle']})" if r["repeat"] > 1 else ""
    print(
        f"ratio this project / plain trl: {r['steady_ratio']}x{per_cycle}, {mark} the {r['target_ratio']}x target"
    )
    pk = m["matmul_peak"]
    print(
        f"matmul peak on {pk['threads']} threads: bf16 {pk['bf16_flops']} GFLOP/s, fp32 {pk['fp32_flops']} GFLOP/s; "
        f"{m['train_flops_per_token'] / 1e6:.0f} MFLOP per trained token"
    )
    print(f"ray.init (once per process, not in the calls above): {y['ray_init_s']} s")
    if max(r["load_average"]) > (r["cpu_count"] or 1):
        print(
            f"CAUTION: load average {max(r['load_average'])} on {r['cpu_count']} cores: other processes shared "
            "the CPU, so the timings are noisy (compare the per-cycle ratios; --repeat helps)"
        )
    p = r["padding"]
    print(
        f"padding (unpacked rows): real tokens are {p['real_share_dynamic_padding']:.0%} of padded batch tokens "
        f"(batch {t['per_device_batch_size']}); {p['mean_tokens_per_row']} tokens/row, {p['rows_at_max_length']} "
        f"of {p['rows']} rows truncated"
    )


if __name__ == "__main__":
    main()
