"""Load test of `finetune-assets serve` on loopback: bounded concurrent clients (1, 4, 16 by default), each
sending chat completions back to back. Reports per level: requests/s, completion tokens/s, latency p50/p95/p99,
the answers' status counts (only 200 and 429 are acceptable), the ratio of each level's throughput to the
one-client level measured in the same run, and the server's resident memory before, between and after the
levels (it should stay flat over a few hundred requests).

Run it (one command, from the repo root after `bash scripts/setup.sh`):

    OMP_NUM_THREADS=1 .venv/bin/python bench/serve_load.py                  # tiny random model, ~1 min
    OMP_NUM_THREADS=1 .venv/bin/python bench/serve_load.py --model smollm2 --requests 48 --max-tokens 16

The server is a subprocess (`python -m finetune_assets.cli serve ... --port 0`) stopped by its PID.
"""

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
QUESTIONS = ["What does {} do?", "When would I use {}?", "Explain {} briefly.", "Give an example of {}."]
TOPICS = ["itertools.chain", "functools.lru_cache", "a list comprehension", "pathlib.Path", "a context manager",
          "dataclasses", "the with statement", "asyncio.gather", "json.dumps", "a generator"]  # fmt: skip


def build_model(kind: str, work: Path) -> Path:
    from finetune_assets.config import ModelConfig, TinyModelConfig, default_home
    from finetune_assets.phases.training.models import resolve_base_model

    if kind == "tiny":
        texts = [
            q.format(t) + " It is a part of Python's standard library." for q in QUESTIONS for t in TOPICS
        ]
        cfg = ModelConfig(source="tiny", tiny=TinyModelConfig())
        return Path(resolve_base_model(cfg, work / "tiny", corpus_texts=texts * 20)["path"])
    out = default_home() / "bench" / "smollm2-served"  # the GGUF conversion (~30 s) is kept between runs
    if not (out / "config.json").exists():
        resolve_base_model(ModelConfig(source="smollm2_package"), out)
    return out


def start_server(
    model_dir: Path, log: Path, max_queue: int, request_log: bool = True
) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "finetune_assets.cli", "serve", str(model_dir), "--port", "0",
           "--model-name", "bench", "--max-queue", str(max_queue)]  # fmt: skip
    # logging on, as deployed; off to measure what the log costs
    cmd += (
        ["--request-log", f"sqlite:///{log.parent / 'requests.sqlite'}"]
        if request_log
        else ["--no-request-log"]
    )
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited:\n{log.read_text()}")
        found = re.search(r"listening on (http://\S+)", log.read_text(errors="replace"))
        if found and _healthy(found.group(1).removesuffix("/v1") + "/health"):
            return proc, found.group(1)
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the server did not start:\n{log.read_text()}")


def _healthy(url: str) -> bool:
    try:
        with OPENER.open(url, timeout=5) as resp:
            return resp.status == 200
    except OSError:
        return False


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def one_request(url: str, i: int, max_tokens: int) -> tuple[int, float, int]:
    """(status, seconds, completion tokens) of one chat completion."""
    question = QUESTIONS[i % len(QUESTIONS)].format(TOPICS[i % len(TOPICS)])
    body = {"messages": [{"role": "user", "content": question}], "max_tokens": max_tokens}
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    started = time.perf_counter()
    try:
        with OPENER.open(req, timeout=300) as resp:
            reply = json.loads(resp.read())
            return resp.status, time.perf_counter() - started, reply["usage"]["completion_tokens"]
    except urllib.error.HTTPError as err:
        err.read()
        return err.code, time.perf_counter() - started, 0


def level(url: str, clients: int, requests: int, max_tokens: int) -> dict:
    """``clients`` threads sending ``requests`` in all, back to back; a 429 is retried after its wait."""
    counter, lock, results = iter(range(requests)), threading.Lock(), []

    def client():
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            while True:
                status, seconds, tokens = one_request(url, i, max_tokens)
                results.append((status, seconds, tokens))
                if status != 429:
                    break
                time.sleep(0.2)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for _ in range(clients):
            pool.submit(client)
    wall = time.perf_counter() - started
    done = [r for r in results if r[0] == 200]
    latencies = sorted(r[1] for r in done)
    quantile = (
        statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else latencies * 99
    )
    statuses: dict[str, int] = {}
    for status, _, _ in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return {
        "clients": clients,
        "requests": requests,
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(done) / wall, 3),
        "completion_tokens_per_s": round(sum(r[2] for r in done) / wall, 1),
        "latency_s": {
            "p50": round(quantile[49], 3),
            "p95": round(quantile[94], 3),
            "p99": round(quantile[98], 3),
        },
        "statuses": statuses,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=("tiny", "smollm2"), default="tiny")
    parser.add_argument("--model-dir", type=Path, help="serve this folder instead")
    parser.add_argument("--clients", default="1,4,16", help="concurrency levels (comma-separated)")
    parser.add_argument("--requests", type=int, default=120, help="requests per level")
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--max-queue", type=int, default=8, help="the server's --max-queue")
    parser.add_argument("--no-request-log", action="store_true", help="serve without the request log")
    parser.add_argument("--output", type=Path, help="also write the JSON report here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        work = Path(tmp)
        model_dir = args.model_dir or build_model(args.model, work)
        proc, base = start_server(model_dir, work / "server.log", args.max_queue, not args.no_request_log)
        try:
            url = base + "/chat/completions"
            one_request(url, 0, args.max_tokens)  # warm-up: the first forward pays one-time costs
            memory = [round(rss_mib(proc.pid), 1)]
            levels = []
            for clients in (int(c) for c in args.clients.split(",")):
                levels.append(level(url, clients, args.requests, args.max_tokens))
                memory.append(round(rss_mib(proc.pid), 1))
        finally:
            proc.terminate()
            proc.wait(30)
    baseline = levels[0]["requests_per_s"] or float("nan")
    for row in levels:
        row["throughput_vs_first_level"] = round(row["requests_per_s"] / baseline, 2)
    failed = {s: n for row in levels for s, n in row["statuses"].items() if s not in ("200", "429")}
    report = {"model": str(args.model_dir or args.model), "max_tokens": args.max_tokens,
              "max_queue": args.max_queue, "request_log": not args.no_request_log, "levels": levels,
              "server_rss_mib": memory,
              "rss_growth_mib": round(memory[-1] - memory[0], 1), "failures_beyond_429": failed}  # fmt: skip
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
