"""`dagster dev` loads the code location and its UI lists all fourteen assets with their lineage."""

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

from finetune_assets_tests.defs.conftest import EXPECTED_ASSETS

REPO = Path(__file__).resolve().parents[2]
QUERY = "{ assetNodes { assetKey { path } dependencyKeys { path } } }"
RUNS = "{ runsOrError { ... on Runs { results { runId status tags { key value } } } } }"
LAUNCH = """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }"""
RUN_STATUS = "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def graphql(port: int, query: str, variables: dict | None = None) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def wait_for(predicate, seconds: float, what: str):
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(2)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


def test_dagster_dev_lists_the_graph_ingests_drops_and_materializes_from_the_ui(tmp_path: Path):
    """Lineage in the UI; the running landing sensor ingests a new drop; a UI launch materializes dedup."""
    drop = tmp_path / "landing" / "drop-ui"
    drop.mkdir(parents=True)
    (drop / "a.txt").write_text("Python is a programming language with dynamic typing. " * 20)
    (drop / "b.md").write_text("# Assets\n\nDagster materializes software-defined assets on demand. " * 20)
    home = tmp_path / "dagster"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "FINETUNE_ASSETS_HOME": str(tmp_path),
        "FINETUNE_ASSETS_PROFILE": "smoke",
    }
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

        def ingest_succeeded():
            runs = graphql(port, RUNS)["data"]["runsOrError"]["results"]
            return [
                r
                for r in runs
                if r["status"] == "SUCCESS" and {"key": "dagster/partition", "value": "drop-ui"} in r["tags"]
            ]

        wait_for(ingest_succeeded, 180, "the landing sensor's ingest run of drop-ui")
        assert (tmp_path / "artifacts" / "raw_corpus" / "drop-ui" / "documents.parquet").exists()

        selector = {
            "repositoryLocationName": "finetune_assets",
            "repositoryName": "__repository__",
            "jobName": "__ASSET_JOB",
            "assetSelection": [{"path": ["dedup_corpus"]}],
        }
        launched = graphql(port, LAUNCH, {"p": {"selector": selector, "mode": "default"}})["data"][
            "launchRun"
        ]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        run_id = launched["run"]["runId"]

        def finished():
            status = graphql(port, RUN_STATUS, {"id": run_id})["data"]["runOrError"]["status"]
            return status if status in ("SUCCESS", "FAILURE", "CANCELED") else None

        assert wait_for(finished, 180, "the UI-launched dedup_corpus run") == "SUCCESS"
        assert (tmp_path / "artifacts" / "dedup_corpus" / "current" / "documents.parquet").exists()
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the whole process group (webserver, daemon, code servers), then SIGKILL what is left."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
