"""Training benchmark: steady-state tokens/s of inst_model's path (Ray Train + trl) against plain trl.

Run it (one command, from the repo root after `bash scripts/setup.sh`):

    OMP_NUM_THREADS=1 .venv/bin/python bench/train_bench.py                  # or: make bench-train
    OMP_NUM_THREADS=1 .venv/bin/python bench/train_bench.py --model smollm2  # the demo's model (slower)

What is compared, on the same model, rows and settings (the ``--profile`` recipe's ``sft`` section: demo's
batch 4, max_length 256, LoRA r16 on all linear layers), in one run:
- ``ray``: launch.ray_train.run_training("sft", ...) exactly as the inst_model asset calls it: an embedded
  loopback Ray (ensure_ray, started once and timed on its own), a TorchTrainer with ``scaling`` workers, in
  each worker phases.train.sft(..., ray_context=True) (prepare_trainer + RayTrainReportCallback).
- ``direct``: phases.train.sft(...) called directly in a fresh Python process (``python train_bench.py
  --_child``): plain trl SFTTrainer in one process, paying the same imports and model load a standalone
  script pays. A fresh process per call also gives its peak RSS exactly (getrusage in the child).
No eval split is passed (eval loss is not training throughput); both paths merge and save the adapter.

Steady state, by differencing two run lengths. Each path trains twice: ``--warmup`` steps (n1) and
``--steps`` steps (n2), same seed. The summary's ``train_runtime_s`` is the time of trainer.train() and
``tokens_seen`` its non-padding input tokens; with the same seed both runs see the same first n1 batches, so

    steady tokens/s = (tokens(n2) - tokens(n1)) / (train_runtime(n2) - train_runtime(n1))

is the rate of steps n1+1..n2 alone: the first steps (allocator and kernel warm-up, first-batch set-up) and
every fixed cost inside train() (dataloader creation, callbacks' train begin/end, Ray's report at the end)
cancel out. Per-step timings are not available from the summary (its log history keeps losses only), and
the Ray path cannot be given an extra callback without changing the code under test: differencing measures
both paths unmodified. The runs alternate (direct n1, ray n1, direct n2, ray n2) so a change in the box's
load affects both paths alike; ``--repeat N`` runs N such cycles and reports the medians and every cycle's
ratio. The ratio ray/direct is the figure to read (target >= 0.9). A resumable checkpoint every
``checkpoint_steps`` (recipe default 50) falls inside the window when it spans a multiple of it: both paths
save it, Ray also persists it to its run storage, as the asset does; ``--checkpoint-steps 0`` leaves it out.

Start-up overhead per call = wall time of the whole call - tokens(call) / steady tokens/s, split into the part
outside trainer.train() (process or worker spawn, imports, model load, trl's tokenization, merge and save;
for ray also TorchTrainer's controller and worker group) and the warm-up inside train(). ray.init is
reported on its own: an asset run pays it once per process, not per call.

Peak memory (RSS; shared pages such as the torch libraries count in every process that maps them):
- direct: ru_maxrss of the child process that trained (getrusage(RUSAGE_SELF) in the child, exact).
- ray train worker: VmHWM (the kernel's peak-RSS mark) of the ``ray::RayTrainWorker`` process, polled every
  0.2 s among this process's descendants (an embedded Ray's gcs, raylet and workers all descend from the
  driver, so other Ray instances on the machine are not counted); it may miss a peak in the last 0.2 s.
- ray, all processes: the largest sampled sum of the current RSS of every descendant (gcs, raylet, idle
  workers, the TrainController and the train worker).
- driver: ru_maxrss of this process, read before anything loads a model or tokenizer here (model
  preparation also runs in a child): Ray's client, ray.train imports and the rows.

Padding share, no training: the rows are tokenized as trl 1.16 does (chat template with the assistant mask,
truncated to max_length keep-start, rows left without an assistant token dropped) and batched at random
(RandomSampler, batch_size rows, padded to the longest row of the batch: trl's collator on CPU, no
pad_to_multiple_of). real share = non-padding tokens / (batch x padded length), averaged over 50 shuffles.
Packing (or padding-free batching) removes the padding, so 1 / share bounds its speed-up; attention's cost grows
with sequence length, so packed max_length rows cost somewhat more per token and the real gain is lower.

Data: instruction rows made the way the instruction_set asset makes them (phases.instructions' api / module /
section generators and its record shape, with the profile's max_response_chars and system prompt) from
``--docs`` library pages of the Python documentation (python3-doc), evenly spread; ``--rows`` of them, evenly
spread. The asset's dedup, decontamination and topic split are skipped: they change which rows exist, not how
long a training step takes.

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
import finetune_assets  # noqa: E402

finetune_assets.quiet_offline_env()  # before torch/transformers load

from finetune_assets.config import (  # noqa: E402
    ModelConfig,
    TinyModelConfig,
    TrainConfig,
    default_home,
    load_profile,
)
from finetune_assets.phases import corpus, instructions  # noqa: E402

MIB = 2**20
TARGET_RATIO = 0.9
DEFAULT_STEPS = {"tiny": (10, 110), "smollm2": (2, 6)}  # (--warmup, --steps)
SAMPLE_EVERY_S = 0.2


# ---------------------------------------------------------------------------------------------------- data
def instruction_rows(count: int, docs: int, profile) -> tuple[list[dict], list[str]]:
    """``count`` instruction rows ({id, messages, ...}) from ``docs`` library pages of the Python docs, and
    the pages' texts (the tiny model trains its tokenizer on them)."""
    sources = corpus.find_python_docs()
    if sources is None:
        raise SystemExit("python3-doc is not installed: run `bash scripts/setup.sh` first")
    files = corpus._spread(sorted((sources / "library").glob("*.rst.txt")), docs)
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
    return corpus._spread(rows, count), texts


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
    """Child process entry: ``prepare`` (resolve the base model) or ``direct`` (phases.train.sft)."""
    spec = json.loads(spec_path.read_text())
    started = time.perf_counter()
    import torch

    torch.set_num_threads(1)  # as launch.ray_train does in every CPU worker
    out: dict = {}
    if spec["op"] == "prepare":
        from finetune_assets.phases import models

        cfg = ModelConfig.model_validate(spec["model"])
        out["info"] = models.resolve_base_model(cfg, Path(spec["out_dir"]), corpus_texts=spec["texts"])
    else:
        import peft  # noqa: F401  - imported here only to time imports apart from sft's own work
        import trl  # noqa: F401

        from finetune_assets.phases import train

        out["import_s"] = time.perf_counter() - started
        cfg = TrainConfig.model_validate(spec["cfg"])
        rows = json.loads(Path(spec["rows"]).read_text())
        call = time.perf_counter()
        out["summary"] = train.sft(Path(spec["base_dir"]), rows, [], cfg, Path(spec["out_dir"]))
        out["sft_call_s"] = time.perf_counter() - call
    out["maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MIB
    Path(spec["result"]).write_text(json.dumps(out, default=str))


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
    """Polls this process's descendants: per-process peak (VmHWM) and the peak of their summed RSS."""

    def __init__(self, every_s: float = SAMPLE_EVERY_S):
        self.every_s = every_s
        self.peak_hwm: dict[int, tuple[int, str]] = {}
        self.peak_total_rss = 0
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

    # 2. Ray, once (an asset run pays this once per process)
    import ray

    started_here = not ray.is_initialized()
    temp = Path(f"/tmp/fa-bench-{os.getpid()}")
    t0 = time.perf_counter()
    ensure_ray(temp_dir=temp)
    ray_init_s = time.perf_counter() - t0

    def direct(steps: int, cycle: int) -> tuple[dict, float, dict]:
        cfg = train_cfg.model_copy(update={"max_steps": steps})
        name = f"direct-{cycle}-{steps}"
        spec = {"op": "direct", "cfg": cfg.model_dump(), "base_dir": str(model_dir), "rows": str(rows_path)}
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

    # 3. alternate the paths so a change in the machine's load hits both alike
    cycles = []
    try:
        for cycle in range(args.repeat):
            d1, r1 = direct(n1, cycle), on_ray(n1, cycle)
            d2, r2 = direct(n2, cycle), on_ray(n2, cycle)
            cycles.append({"direct": (d1, d2), "ray": (r1, r2), "load": os.getloadavg()[0]})
        driver_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    finally:
        if started_here:
            shutdown_ray()
            shutil.rmtree(temp, ignore_errors=True)

    rates = {
        path: [steady(c[path][0][0], c[path][1][0])["tokens_per_s"] for c in cycles]
        for path in ("direct", "ray")
    }
    ratios = [r / d for r, d in zip(rates["ray"], rates["direct"], strict=True)]
    memories = [m for c in cycles for _, _, m in c["ray"]]
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
        "direct": {
            **path_result("direct"),
            "import_s": round(cycles[0]["direct"][0][2]["import_s"], 2),
            "peak_rss_mib": round(max(x[2]["maxrss_mib"] for c in cycles for x in c["direct"]), 1),
        },
        "ray": {
            **path_result("ray"),
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

    # 4. padding (after the driver's peak was read: this loads a tokenizer here)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    lengths, dropped = token_lengths(tokenizer, rows, train_cfg.max_length)
    result["padding"] = {
        **padding_share(lengths, train_cfg.per_device_batch_size, train_cfg.max_length),
        "rows_dropped_fully_masked": dropped,
    }
    _print(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


def _num_params(model_dir: Path) -> int | None:
    from finetune_assets.phases.models import _num_params_from_safetensors

    try:
        return _num_params_from_safetensors(model_dir)
    except Exception:  # noqa: BLE001 - a figure for the table only
        return None


def _print(r: dict) -> None:
    t, d, y = r["train"], r["direct"], r["ray"]
    n1, n2 = r["steps"]
    params = f"{r['num_params'] / 1e6:.2f}M params" if r["num_params"] else "?"
    print(
        f"model {r['model']} ({params}), {r['rows']} rows, batch {t['per_device_batch_size']}, max_length "
        f"{t['max_length']}, LoRA r{t['lora_r']}; runs of {n1} and {n2} steps (x{r['repeat']}): "
        f"steady state = steps {n1 + 1}-{n2}"
    )
    if r["checkpoints_in_steady_window"]:
        print(
            f"the steady window includes {r['checkpoints_in_steady_window']} checkpoint save(s) (every "
            f"{r['checkpoint_steps']} steps; --checkpoint-steps 0 leaves them out)"
        )
    print(f"{'':34} {'direct (trl)':>14} {'ray (run_training)':>19}")
    rows = [
        ("steady tokens/s", d["steady_tokens_per_s"], y["steady_tokens_per_s"], "{:.1f}"),
        ("steady s/step", d["steady_s_per_step"], y["steady_s_per_step"], "{:.3f}"),
        (
            "warm-up inside train() s",
            d["calls"][0]["warmup_in_train_s"],
            y["calls"][0]["warmup_in_train_s"],
            "{:.1f}",
        ),
    ]
    for i, label in ((0, f"{n1}-step"), (1, f"{n2}-step")):
        dc, yc = d["calls"][i], y["calls"][i]
        rows += [
            (f"{label} call: wall s", dc["wall_s"], yc["wall_s"], "{:.1f}"),
            ("  start-up overhead s", dc["overhead_s"], yc["overhead_s"], "{:.1f}"),
            ("  of it outside train() s", dc["outside_train_s"], yc["outside_train_s"], "{:.1f}"),
        ]
    rows += [
        ("peak RSS training process MiB", d["peak_rss_mib"], y["peak_rss_mib"]["train_worker"], "{:.0f}"),
        ("peak RSS all Ray processes MiB", None, y["peak_rss_mib"]["all_ray_processes"], "{:.0f}"),
        ("peak RSS driver MiB", None, y["peak_rss_mib"]["driver"], "{:.0f}"),
    ]
    for label, a, b, fmt in rows:
        a_s = fmt.format(a) if a is not None else "-"
        print(f"{label:34} {a_s:>14} {fmt.format(b):>19}")
    mark = "meets" if r["meets_target"] else "BELOW"
    per_cycle = f" (per cycle: {r['steady_ratio_per_cycle']})" if r["repeat"] > 1 else ""
    print(
        f"steady-state ratio ray / direct: {r['steady_ratio']}{per_cycle}, {mark} the {r['target_ratio']} target"
    )
    print(
        f"ray.init (once per process, not in the calls above): {y['ray_init_s']} s; direct child imports "
        f"(in its overhead): {d['import_s']} s"
    )
    if max(r["load_average"]) > (r["cpu_count"] or 1):
        print(
            f"CAUTION: load average {max(r['load_average'])} on {r['cpu_count']} cores: other processes shared "
            "the CPU, so the timings are noisy (compare the per-cycle ratios; --repeat helps)"
        )
    p = r["padding"]
    print(
        f"padding: real tokens are {p['real_share_dynamic_padding']:.0%} of padded batch tokens (batch "
        f"{t['per_device_batch_size']}, padded to the longest row; {p['real_share_at_max_length']:.0%} of "
        f"batch x max_length); {p['mean_tokens_per_row']} tokens/row, {p['rows_at_max_length']} of "
        f"{p['rows']} rows truncated -> packing could gain at most {p['packing_speedup_bound']}x"
    )
    if r["packing"]:
        print(
            "(packing is on in this recipe where the model supports it: the padding figure is for unpacked rows)"
        )


if __name__ == "__main__":
    main()
