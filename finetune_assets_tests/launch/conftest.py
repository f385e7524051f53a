import json
import os
import shutil
import socket
import time
import uuid
from pathlib import Path

import pytest

from finetune_assets.launch import processes, stack
from finetune_assets.launch.ray_cluster import ensure_ray, shutdown_ray


@pytest.fixture(scope="package")
def embedded_ray():
    """One embedded loopback Ray for the launch tests (start-up costs seconds), shut down after them."""
    info = ensure_ray(num_cpus=2)
    yield info
    shutdown_ray()


def free_base() -> int:
    """A port base whose 200 ports are all free on 127.0.0.1."""
    for base in range(48000, 60000, 250):
        if not any(_in_use(base + offset) for offset in range(200)):
            return base
    raise RuntimeError("no free range of 200 ports on 127.0.0.1")


def _in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="package")
def running_stack():
    """`finetune-assets stack up` in a fresh folder for the stack tests (test_stack*.py), down after them."""
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
        if processes.running_pid(root, "postgres"):
            print(f"\nstack held: {json.dumps(held(where))}")  # shown with pytest -s (the closing notes)
        pgids = {name: processes.running_pid(root, name) for name in stack.ORDER}
        stopped = stack.down(where)
        leftovers = {name: processes.group_members(pid) for name, pid in pgids.items() if pid}
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
        shutil.rmtree(root, ignore_errors=True)
        assert sorted(stopped) == sorted(n for n, pid in pgids.items() if pid)
        assert not any(leftovers.values()), f"processes left after stack down: {leftovers}"


def held(where) -> dict:
    """What the servers hold: database bytes and key row counts, served artifact bytes."""
    import psycopg2

    out = {}
    with psycopg2.connect(where.pg_url("postgres")) as conn, conn.cursor() as cur:
        for db in ("dagster", "mlflow"):
            cur.execute("SELECT pg_database_size(%s)", (db,))
            out[f"{db}_db_bytes"] = cur.fetchone()[0]
    for db, table in (("dagster", "runs"), ("dagster", "event_logs"), ("mlflow", "runs"),
                      ("mlflow", "model_versions")):  # fmt: skip
        out[f"{db}.{table}_rows"] = pg_count(where, db, f"SELECT count(*) FROM {table}")
    artifacts = where.root / "mlflow-artifacts"
    out["mlflow_artifact_bytes"] = sum(f.stat().st_size for f in artifacts.rglob("*") if f.is_file())
    return out


def pg_count(where, database: str, query: str) -> int:
    import psycopg2

    with psycopg2.connect(where.pg_url(database)) as conn, conn.cursor() as cur:
        cur.execute(query)
        return int(cur.fetchone()[0])
