"""`dagster dev` loads the code location and its UI lists all eleven assets with their lineage."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from finetune_assets_tests.defs.test_automation import EXPECTED_ASSETS

REPO = Path(__file__).resolve().parents[2]
QUERY = "{ assetNodes { assetKey { path } dependencyKeys { path } } }"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_dagster_dev_lists_all_assets_with_lineage(tmp_path: Path):
    home = tmp_path / "dagster"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(home), "FINETUNE_ASSETS_HOME": str(tmp_path)}
    port = free_port()
    dagster = Path(sys.executable).parent / "dagster"
    cmd = [str(dagster), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)]
    # Its own session, so the webserver, daemon and code server are stopped together by process group id.
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.time() + 120
        nodes = None
        while time.time() < deadline and nodes is None:
            assert proc.poll() is None, "dagster dev exited early"
            try:
                nodes = graphql(port, QUERY)["data"]["assetNodes"]
            except (OSError, KeyError, TypeError):
                time.sleep(2)
        assert nodes is not None, "dagster dev did not answer within 120 s"
        lineage = {
            "/".join(n["assetKey"]["path"]): {"/".join(d["path"]) for d in n["dependencyKeys"]} for n in nodes
        }
        assert set(lineage) == EXPECTED_ASSETS
        assert lineage["eval_sets"] == {"dedup_corpus"}
        assert lineage["inst_model"] == {"base_checkpoint", "instruction_set"}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
