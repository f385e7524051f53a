"""A real ``finetune-assets serve`` subprocess, shared by test_serve, test_llm and test_teacher.

``served_model`` (session scope) starts ``python -m finetune_assets.cli serve MODEL --port 0`` on 127.0.0.1 once
for the whole session, whichever of the modules importing it runs first, and stops it by its PID (terminate,
then kill after a timeout) when the last of them is torn down. The served folder is the session's tiny model
with its layer weights scaled up (``babbling_model_dir``): a fresh tiny model only repeats "\\n" (stripped to
""), while this one answers each prompt with its own deterministic babble, so a mix-up or a stale cache would
show.

Import it into a test module as ``from finetune_assets_tests.phases.llm_server import served_model  # noqa:
F401`` (pytest registers fixtures found in a module's namespace).
"""

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import NamedTuple

import pytest

MODEL_NAME = "tiny"
_LISTENING = re.compile(r"listening on (http://\S+)")
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Served(NamedTuple):
    base_url: str  # http://127.0.0.1:PORT/v1
    model: str
    proc: subprocess.Popen
    log: Path


def request_json(
    url: str, body=None, method: str | None = None, timeout: float = 30.0, headers: dict | None = None
) -> tuple[int, dict]:
    """(status, JSON body) of a request; ``body`` bytes are sent as is, anything else as JSON."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **(headers or {})}
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with _NO_PROXY.open(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def babbling_model_dir(model_dir: Path, out: Path) -> Path:
    """A copy of ``model_dir`` whose layer weights are drawn with std 0.5 (seeded): distinct babble per prompt."""
    import torch
    from transformers import AutoModelForCausalLM

    shutil.copytree(model_dir, out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layers" in name and param.dim() == 2:
                param.normal_(std=0.5)
    model.save_pretrained(out)
    return out


def start_server(model_dir: Path, log: Path, model_name: str = MODEL_NAME, timeout: float = 120.0) -> Served:
    """Start the server on a free port; return once /health answers (raise with its log if it dies)."""
    cmd = [sys.executable, "-m", "finetune_assets.cli", "serve", str(model_dir), "--port", "0"]
    cmd += ["--model-name", model_name, "--log-level", "INFO"]
    cmd += ["--request-log", f"sqlite:///{log.parent / 'requests.sqlite'}"]  # beside the log, not in a home
    with open(log, "wb") as fh:  # the child keeps its own descriptor: no pipe to drain
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    try:
        base_url = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode}:\n{log.read_text()}")
            match = _LISTENING.search(log.read_text(errors="replace"))
            if match:
                base_url = match.group(1)
                try:
                    status, _ = request_json(base_url.removesuffix("/v1") + "/health", timeout=5)
                    if status == 200:
                        return Served(base_url, model_name, proc, log)
                except OSError:
                    pass
            time.sleep(0.1)
        raise RuntimeError(f"the server did not answer within {timeout} s:\n{log.read_text()}")
    except BaseException:
        stop_server(proc)
        raise


def stop_server(proc: subprocess.Popen, timeout: float = 10.0) -> int:
    """Stop our server by its PID: SIGTERM, wait, SIGKILL if it does not exit in ``timeout`` s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
    return proc.returncode


_SHARED: dict = {"model": None, "served": None, "users": 0}


def _shared_babbling_model(tiny_model_dir, tmp_path_factory) -> Path:
    if _SHARED["model"] is None:
        _SHARED["model"] = babbling_model_dir(tiny_model_dir, tmp_path_factory.mktemp("babbling") / "model")
    return _SHARED["model"]


@pytest.fixture(scope="session")
def babbling_model(tiny_model_dir, tmp_path_factory) -> Path:
    """The babbling copy of the tiny model (built once per session; read-only)."""
    return _shared_babbling_model(tiny_model_dir, tmp_path_factory)


@pytest.fixture(scope="session")
def served_model(tiny_model_dir, tmp_path_factory) -> Served:
    """The shared server (see the module docstring); one per session although each module registers this."""
    if _SHARED["served"] is None:
        model = _shared_babbling_model(tiny_model_dir, tmp_path_factory)
        _SHARED["served"] = start_server(model, tmp_path_factory.mktemp("served") / "server.log")
    _SHARED["users"] += 1
    served = _SHARED["served"]
    yield served
    _SHARED["users"] -= 1
    if _SHARED["users"] == 0:
        _SHARED["served"] = None
        returncode = stop_server(served.proc)
        assert returncode == 0, f"the server did not stop cleanly ({returncode}):\n{served.log.read_text()}"
