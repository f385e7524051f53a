"""The production layout against its real servers (marked integration): `finetune-assets stack up` in a fresh
folder, driven as a user would (files in the landing folder, Dagster's GraphQL API, MLflow over HTTP, a Ray
driver with and without the token), then `stack down` stops exactly what it started.

Needs Debian's postgresql package (`bash scripts/setup.sh --stack`); CI installs it, elsewhere the module is
skipped without it. Runs on the smoke profile; about two minutes, most of it the sensor's first tick and the
three ingest runs' process start-up.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from finetune_assets.launch import processes, stack
from finetune_assets_tests.launch.conftest import pg_count

pytestmark = pytest.mark.integration

if not sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres")):
    if os.environ.get("CI"):
        raise RuntimeError("CI must install PostgreSQL for the stack tests: bash scripts/setup.sh --stack")
    pytest.skip("PostgreSQL is not installed (bash scripts/setup.sh --stack)", allow_module_level=True)


DOC = (
    "# Drop {n}\n\nThe {topic} module keeps the state of a long running service. It is documented here in "
    "plain words so that the ingest step has real text to read. "
    * 1
    + "A configuration file names every option, and the operator changes them without restarting. " * 6
)


def test_every_service_is_up_and_every_process_of_the_stack_listens_on_loopback_only(running_stack):
    where, state = running_stack
    assert all(s["up"] for s in state["services"].values()), state
    p = where.ports
    listening = stack_listeners(where)
    ports = {port for _, port in listening}
    for port in (p.postgres, p.mlflow, p.dagster_webserver, p.dagster_code, p.ray_gcs):
        assert port in ports, port
    # Ray's own servers and agents included (their ports are partly Ray's choice): nothing beyond loopback
    assert {address for address, _ in listening} <= {"127.0.0.1", "::ffff:127.0.0.1"}, sorted(listening)


def stack_listeners(where) -> set[tuple[str, int]]:
    """(local address, port) of every listening TCP socket held by a process of the stack's services."""
    pids = set()
    for name in stack.ORDER:
        leader = processes.running_pid(where.root, name)
        if leader:
            pids.update(processes.group_members(leader))
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = set()
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found.add((_decode(address, v6), int(hex_port, 16)))
    return found


def _decode(address: str, v6: bool) -> str:
    raw = bytes.fromhex(address)
    words = [raw[i : i + 4][::-1] for i in range(0, len(raw), 4)]  # little-endian 32-bit words
    data = b"".join(words)
    if not v6:
        return socket.inet_ntop(socket.AF_INET, data)
    return socket.inet_ntop(socket.AF_INET6, data)


def test_ray_needs_the_token_and_runs_work_on_the_worker_node(running_stack):
    where, _ = running_stack
    # the project's own join (FINETUNE_ASSETS_RAY_ADDRESS from the stack's env), as a training asset does
    code = (
        "import json, os, ray\n"
        "from finetune_assets.launch.ray_cluster import ensure_ray\n"
        "info = ensure_ray(os.environ['FINETUNE_ASSETS_RAY_ADDRESS'])\n"
        "node = ray.get(ray.remote(num_cpus=1)(lambda: ray.get_runtime_context().get_node_id()).remote())\n"
        "cpus = {n['NodeID']: n['Resources'].get('CPU', 0) for n in ray.nodes() if n['Alive']}\n"
        "print(json.dumps({'node_cpus': cpus[node], 'nodes': len(cpus), 'min_node_cpus': info['min_node_cpus'],\n"
        "                  'embedded': info['embedded']}))\n"
    )
    with_token = {**os.environ, **where.client_env()}
    done = subprocess.run([sys.executable, "-c", code], env=with_token, capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    placed = json.loads(done.stdout.strip().splitlines()[-1])
    # the head has no CPUs: work lands on the worker, whose cores are what one training worker may take
    assert placed == {"node_cpus": 2.0, "nodes": 2, "min_node_cpus": 2.0, "embedded": False}

    wrong = {**with_token, "RAY_AUTH_TOKEN": "0" * 64, "HOME": str(where.root / "nohome")}
    wrong.pop("RAY_AUTH_TOKEN_PATH")
    refused = subprocess.run([sys.executable, "-c", code], env=wrong, capture_output=True, text=True,
                             timeout=120, check=False)  # fmt: skip
    assert refused.returncode != 0


def test_mlflow_server_holds_runs_registered_versions_aliases_and_artifacts(running_stack, tmp_path):
    where, _ = running_stack
    from mlflow.artifacts import download_artifacts

    from finetune_assets.tracking import REGISTERED_MODEL, Tracker

    tracker = Tracker(where.client_env()["MLFLOW_TRACKING_URI"], "stack-test")
    assert tracker.remote
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}')
    run_id = tracker.client.create_run(tracker.experiment_id).info.run_id
    version = tracker.register_model("inst", model, run_id)

    found = tracker.client.get_model_version_by_alias(REGISTERED_MODEL, "latest-inst")
    assert found.version == version and found.source.startswith("mlflow-artifacts:")
    got = download_artifacts(artifact_uri=found.source, dst_path=str(tmp_path / "down"),
                             tracking_uri=tracker.tracking_uri)  # fmt: skip
    assert (Path(got) / "config.json").read_text() == '{"model_type": "llama"}'
    assert (where.root / "mlflow-artifacts").is_dir()  # served from the stack's artifact root
    assert pg_count(where, "mlflow", "SELECT count(*) FROM model_versions") >= 1


def gql(where, query: str, **variables) -> dict:
    import requests

    url = f"http://127.0.0.1:{where.ports.dagster_webserver}/graphql"
    answer = requests.post(url, json={"query": query, "variables": variables}, timeout=60).json()
    assert "errors" not in answer, answer
    return answer["data"]


RUNS_QUERY = """
query($filter: RunsFilter) {
  runsOrError(filter: $filter) {
    ... on Runs { results { runId status jobName tags { key value } } }
  }
}
"""
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}


def runs(where, **run_filter) -> list[dict]:
    return gql(where, RUNS_QUERY, filter=run_filter)["runsOrError"]["results"]


def wait_for(predicate, timeout_s: float, what: str, every_s: float = 5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


FAILURE_EVENTS = """
query($runId: ID!) {
  runOrError(runId: $runId) {
    ... on Run { eventConnection { events { __typename
      ... on ExecutionStepFailureEvent { stepKey error { message } }
      ... on RunFailureEvent { message }
    } } }
  }
}
"""


def failures(where, run_id: str) -> list[str]:
    """Why a run failed, from its event log: for the assertion messages."""
    events = gql(where, FAILURE_EVENTS, runId=run_id)["runOrError"]["eventConnection"]["events"]
    return [
        f"{e.get('stepKey') or 'run'}: {(e.get('error') or {}).get('message') or e.get('message')}"
        for e in events
        if e["__typename"] in ("ExecutionStepFailureEvent", "RunFailureEvent")
    ]


def tag(run: dict, key: str) -> str | None:
    return next((t["value"] for t in run["tags"] if t["key"] == key), None)


def test_landed_drops_become_partitions_and_ingest_runs_under_the_daemon(running_stack):
    from finetune_assets.phases.data import demo_seed
    from finetune_assets.recipe import load_profile

    where, _ = running_stack
    landing = where.home / "landing"
    seeded = demo_seed.seed_demo_landing(landing, load_profile("smoke").corpus)
    (landing / "drop-0003-notes.md").write_text(DOC.format(n=3, topic="cache"))
    drops = [*seeded, "drop-0003-notes.md"]
    assert len(drops) == 3

    def ingested():
        found = runs(where, pipelineName="ingest_drop")
        return found if len(found) == 3 and all(r["status"] in FINISHED for r in found) else None

    found = wait_for(ingested, 300, "three ingest runs")
    assert [r["status"] for r in found] == ["SUCCESS"] * 3, found
    assert sorted(tag(r, "dagster/partition") for r in found) == sorted(drops)
    # the runs, their events and the partitions are in the stack's Postgres, not in sqlite files
    assert pg_count(where, "dagster", "SELECT count(*) FROM runs WHERE pipeline_name = 'ingest_drop'") == 3
    assert pg_count(where, "dagster", "SELECT count(*) FROM dynamic_partitions") == 3
    assert not list(where.dagster_home.glob("**/*.db"))


BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}
"""


def test_a_partition_backfill_reingests_every_drop_and_reports_the_broken_one(running_stack):
    from finetune_assets.defs.data import data_drops

    where, _ = running_stack
    (where.home / "landing" / "_broken").mkdir()  # '_' entries are no drops for the sensor: added by hand
    add = [sys.executable, "-c", "import dagster as dg; "
           f"dg.DagsterInstance.get().add_dynamic_partitions('{data_drops.name}', ['_broken'])"]  # fmt: skip
    subprocess.run(add, env={**os.environ, **where.client_env()}, check=True, timeout=120)
    drops = sorted(tag(r, "dagster/partition") for r in runs(where, pipelineName="ingest_drop"))
    params = {"partitionNames": [*drops, "_broken"], "assetSelection": [{"path": ["raw_corpus"]}]}
    backfill = gql(where, BACKFILL, params=params)["launchPartitionBackfill"]
    assert backfill["__typename"] == "LaunchBackfillSuccess", backfill

    def backfill_runs():
        found = runs(where, tags=[{"key": "dagster/backfill", "value": backfill["backfillId"]}])
        return found if len(found) == 4 and all(r["status"] in FINISHED for r in found) else None

    found = wait_for(backfill_runs, 300, "the backfill's four runs")
    status = {tag(r, "dagster/partition"): r["status"] for r in found}
    assert status == {**dict.fromkeys(drops, "SUCCESS"), "_broken": "FAILURE"}

    # the same from the CLI, as the README says: a job backfill the daemon runs
    cli = [str(Path(sys.executable).parent / "dagster"), "job", "backfill", "-j", "ingest_drop",
           "--partitions", ",".join(drops[:2]), "--noprompt", "-w", str(where.workspace)]  # fmt: skip
    subprocess.run(
        cli, env={**os.environ, **where.client_env()}, check=True, timeout=300, capture_output=True
    )

    def cli_runs():  # ingest runs of a backfill other than the GraphQL one (the daemon launches them)
        found = [r for r in runs(where, pipelineName="ingest_drop")
                 if tag(r, "dagster/backfill") not in (None, backfill["backfillId"])]  # fmt: skip
        return found if len(found) == 2 and all(r["status"] in FINISHED for r in found) else None

    assert [r["status"] for r in wait_for(cli_runs, 300, "the CLI backfill's runs")] == ["SUCCESS"] * 2


MATERIALIZATION = """
query($path: [String!]!) {
  assetOrError(assetKey: {path: $path}) {
    ... on Asset {
      assetMaterializations(limit: 20) { runId metadataEntries { label ... on TextMetadataEntry { text } } }
    }
  }
}
"""


def test_new_drops_retrain_once_debounced_with_training_on_the_stacks_ray(running_stack):
    where, _ = running_stack

    def finished_retrain():
        return [r for r in runs(where, pipelineName="retrain") if r["status"] in FINISHED] or None

    retrain = wait_for(finished_retrain, 1200, "a retrain run", every_s=10)[-1]  # newest first: the first one
    ingests = [r for r in runs(where, pipelineName="ingest_drop") if r["status"] == "SUCCESS"]
    assert len(runs(where, pipelineName="retrain")) < len(ingests)  # one per burst, not one per drop
    assert int(tag(retrain, "finetune_assets/drops")) >= 2
    # the newest materialization that trained (a later retrain with unchanged inputs reuses the model and
    # records no Ray job)
    found, meta = next(
        (m, labels)
        for m in gql(where, MATERIALIZATION, path=["inst_model"])["assetOrError"]["assetMaterializations"]
        if "ray_cluster" in (labels := {e["label"]: e.get("text") for e in m["metadataEntries"]})
    )
    # a retrain trained it (a later burst, e.g. the backfill's re-ingests, may have retrained again since)
    assert found["runId"] in {r["runId"] for r in runs(where, pipelineName="retrain")}
    assert meta["ray_cluster"] == "external" and meta["ray_address"].endswith(f":{where.ports.ray_gcs}")
    # the job shows on that cluster: its job table holds the training driver's job id
    code = (
        "import json, os, ray\n"
        "ray.init(address=os.environ['FINETUNE_ASSETS_RAY_ADDRESS'], logging_level='ERROR')\n"
        "print(json.dumps([j['JobID'] for j in ray._private.state.jobs()]))\n"
    )
    env = {**os.environ, **where.client_env()}
    listed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                            timeout=120, check=True)  # fmt: skip
    assert meta["ray_job_id"] in json.loads(listed.stdout.strip().splitlines()[-1])


LAUNCH = """
mutation($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
  }
}
"""
STEP_EVENTS = """
query($runId: ID!) {
  runOrError(runId: $runId) {
    ... on Run { eventConnection { events { __typename ... on MessageEvent { stepKey timestamp } } } }
  }
}
"""


def launch(where, job: str, tags: dict | None = None, assets: list[str] | None = None) -> str:
    selector = {
        "repositoryLocationName": "finetune_assets",
        "repositoryName": "__repository__",
        "jobName": job,
    }
    if assets:
        selector["assetSelection"] = [{"path": [a]} for a in assets]
    params = {"selector": selector, "runConfigData": {},
              "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]}}  # fmt: skip
    launched = gql(where, LAUNCH, params=params)["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    return launched["run"]["runId"]


def step_window(where, run_id: str, step: str) -> tuple[float, float]:
    events = gql(where, STEP_EVENTS, runId=run_id)["runOrError"]["eventConnection"]["events"]
    times = {e["__typename"]: float(e["timestamp"]) for e in events if e.get("stepKey") == step}
    return times["ExecutionStepStartEvent"], times["ExecutionStepSuccessEvent"]


def test_the_request_log_lives_in_the_stacks_postgres_and_ab_report_reads_it(running_stack):
    """A server pointed at the stack (env.sh) logs to its Postgres; the code server's runs read it there."""
    from finetune_assets.phases.serving.request_log import RequestLog

    where, _ = running_stack
    url = where.client_env()["FINETUNE_ASSETS_REQUEST_LOG"]
    assert url.startswith("postgresql+psycopg2://") and url.endswith("/serving")
    log = RequestLog(url)
    for i in range(40):
        rid = f"chatcmpl-stack-{i}"
        question = [{"role": "user", "content": f"q{i}"}]
        log.log_response({"id": rid, "variant": ("champion", "challenger")[i % 2], "routed": True, "status": 200,
                          "latency_s": 0.2, "messages": question, "answer": "a"})  # fmt: skip
        log.log_feedback(rid, i % 3 != 0)
    assert pg_count(where, "serving", "SELECT count(*) FROM responses") == 40
    run_id = launch(where, "__ASSET_JOB", assets=["ab_report"])
    done = wait_for(
        lambda: [r for r in runs(where, runIds=[run_id]) if r["status"] in FINISHED], 300, "ab_report"
    )
    assert done[0]["status"] == "SUCCESS", failures(where, run_id)
    report = json.loads((where.home / "artifacts" / "ab_report" / "current" / "report.json").read_text())
    assert report["requests"] == 40 and set(report["variants"]) == {"champion", "challenger"}


def test_two_training_runs_at_once_queue_on_the_gpu_pool(running_stack):
    where, _ = running_stack
    first, second = (launch(where, "__ASSET_JOB", assets=["inst_model"]) for _ in range(2))

    def both_done():
        found = {r["runId"]: r["status"] for r in runs(where, runIds=[first, second])}
        return found if len(found) == 2 and set(found.values()) <= FINISHED else None

    statuses = wait_for(both_done, 900, "the two inst_model runs")
    assert set(statuses.values()) == {"SUCCESS"}, [failures(where, r) for r in statuses]
    (a_start, a_end), (b_start, b_end) = sorted(step_window(where, r, "inst_model") for r in (first, second))
    assert a_end <= b_start  # one slot: the second training step started after the first had finished


def test_a_killed_run_worker_is_marked_failed_and_the_retry_completes(running_stack):
    where, _ = running_stack
    code_server = processes.running_pid(where.root, "dagster-code")
    before = set(processes.children(code_server))
    drop = tag(runs(where, pipelineName="ingest_drop")[0], "dagster/partition")
    run_id = launch(where, "ingest_drop", tags={"dagster/partition": drop})
    worker = wait_for(
        lambda: set(processes.children(code_server)) - before, 120, "the run worker", every_s=0.2
    )
    for pid in worker:
        os.kill(pid, 9)

    def retried():
        original = runs(where, runIds=[run_id])[0]
        retries = runs(where, tags=[{"key": "dagster/parent_run_id", "value": run_id}])
        done = original["status"] in FINISHED and retries and retries[0]["status"] in FINISHED
        return (original, retries[0]) if done else None

    original, retry = wait_for(retried, 300, "the killed run's retry")
    assert original["status"] == "FAILURE" and retry["status"] == "SUCCESS", failures(where, retry["runId"])
    assert failures(where, run_id), "the killed run's failure is in its event log, with a reason"
