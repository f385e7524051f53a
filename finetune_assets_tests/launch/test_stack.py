"""The production layout against its real servers (marked integration): `finetune-assets stack up` in a fresh
folder, driven as a user would (files in the landing folder, Dagster's GraphQL API, MLflow over HTTP, a Ray
driver with and without the token), then `stack down` stops exactly what it started.

Needs Debian's postgresql package (`bash scripts/setup.sh --stack`); CI installs it, elsewhere the module is
skipped without it. Runs on the smoke profile; about two minutes, most of it the sensor's first tick and the
three ingest runs' process start-up.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from finetune_assets.launch import processes, stack

pytestmark = pytest.mark.integration

if not sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres")):
    if os.environ.get("CI"):
        raise RuntimeError("CI must install PostgreSQL for the stack tests: bash scripts/setup.sh --stack")
    pytest.skip("PostgreSQL is not installed (bash scripts/setup.sh --stack)", allow_module_level=True)


def free_base() -> int:
    """A port base whose 200 ports are all free on 127.0.0.1."""
    for base in range(48000, 60000, 250):
        if not any(_in_use(base + offset) for offset in range(200)):
            return base
    raise RuntimeError("no free range of 200 ports on 127.0.0.1")


def _in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


DOC = (
    "# Drop {n}\n\nThe {topic} module keeps the state of a long running service. It is documented here in "
    "plain words so that the ingest step has real text to read. "
    * 1
    + "A configuration file names every option, and the operator changes them without restarting. " * 6
)


@pytest.fixture(scope="module")
def running_stack():
    root = Path("/var/tmp") / f"fa-stack-test-{uuid.uuid4().hex[:8]}"  # the postgres user can reach /var/tmp
    root.mkdir(mode=0o755)
    env = {
        "FINETUNE_ASSETS_STACK_DIR": str(root),
        "FINETUNE_ASSETS_HOME": str(root / "home"),
        "FINETUNE_ASSETS_STACK_PORT": str(free_base()),
        "FINETUNE_ASSETS_PROFILE": "smoke",
        "FINETUNE_ASSETS_STACK_CPUS": "2",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    where = stack.Stack.from_env()
    started = time.monotonic()
    try:
        state = stack.up(where)
        state["up_s"] = time.monotonic() - started
        yield where, state
    finally:
        pgids = {name: processes.running_pid(root, name) for name in stack.ORDER}
        stopped = stack.down(where)
        leftovers = {name: processes.group_members(pid) for name, pid in pgids.items() if pid}
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
        shutil.rmtree(root, ignore_errors=True)
        assert sorted(stopped) == sorted(n for n, pid in pgids.items() if pid)
        assert not any(leftovers.values()), f"processes left after stack down: {leftovers}"


def test_every_service_is_up_and_dagster_mlflow_postgres_listen_on_loopback_only(running_stack):
    where, state = running_stack
    assert all(s["up"] for s in state["services"].values()), state
    p = where.ports
    for port in (p.postgres, p.mlflow, p.dagster_webserver, p.dagster_code):
        assert listen_addresses(port) <= {"127.0.0.1", "::ffff:127.0.0.1"}, port


def listen_addresses(port: int) -> set[str]:
    """The local addresses that listen on ``port``, from /proc/net/tcp and tcp6."""
    found = set()
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(_decode(address, v6))
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


def pg_count(where, database: str, query: str) -> int:
    import psycopg2

    with psycopg2.connect(where.pg_url(database)) as conn, conn.cursor() as cur:
        cur.execute(query)
        return int(cur.fetchone()[0])


RUNS_QUERY = """
query {
  runsOrError(filter: {pipelineName: "ingest_drop"}) {
    ... on Runs { results { runId status tags { key value } } }
  }
}
"""


def test_landed_files_become_partitions_and_ingest_runs_under_the_daemon(running_stack):
    where, _ = running_stack
    import requests

    landing = where.home / "landing"
    landing.mkdir(parents=True, exist_ok=True)
    drops = [f"drop-{n}.md" for n in range(3)]
    for n, name in enumerate(drops):
        (landing / name).write_text(DOC.format(n=n, topic=["sched", "queue", "cache"][n]))

    url = f"http://127.0.0.1:{where.ports.dagster_webserver}/graphql"
    deadline = time.monotonic() + 300
    runs = []
    while time.monotonic() < deadline:
        answer = requests.post(url, json={"query": RUNS_QUERY}, timeout=30).json()
        runs = answer["data"]["runsOrError"]["results"]
        if len(runs) == 3 and all(r["status"] in {"SUCCESS", "FAILURE", "CANCELED"} for r in runs):
            break
        time.sleep(5)
    assert [r["status"] for r in runs] == ["SUCCESS"] * 3, runs
    partitions = sorted(t["value"] for r in runs for t in r["tags"] if t["key"] == "dagster/partition")
    assert partitions == drops
    # the runs, their events and the partitions are in the stack's Postgres, not in sqlite files
    assert pg_count(where, "dagster", "SELECT count(*) FROM runs WHERE pipeline_name = 'ingest_drop'") == 3
    assert pg_count(where, "dagster", "SELECT count(*) FROM dynamic_partitions") == 3
    assert not list(where.dagster_home.glob("**/*.db"))
