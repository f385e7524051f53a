"""The production layout as local processes on 127.0.0.1: ``finetune-assets stack up|down|status``.

Services, started in this order and stopped in the reverse one (launch.processes: by PID, never by name):
- postgres: Debian's PostgreSQL with its own initdb folder and port; databases ``dagster``, ``mlflow`` and
  ``serving`` (the model server's request/feedback log: FINETUNE_ASSETS_REQUEST_LOG in env.sh);
- mlflow: ``mlflow server`` with its backend store on Postgres, ``--serve-artifacts`` and an artifact root;
- ray-head (no CPUs of its own: it schedules) and ray-worker (the machine's cores), token auth on, both
  on 127.0.0.1 (launch.ray_node);
- dagster-code: the code location as a gRPC server; the runs it launches inherit its environment (Ray address,
  MLflow URI, Ray token), so training runs on the stack's Ray and logs to its MLflow;
- dagster-webserver and dagster-daemon (schedules, sensors, the run queue, run monitoring and retries) on a
  Dagster instance whose storage is Postgres (the repo's dagster.postgres.yaml).

Everything lives in the stack folder (``FINETUNE_ASSETS_STACK_DIR``, default <home>/stack): data, logs, pid
files, secrets (mode 0600), the generated workspace, and ``env.sh``, which points a shell's CLI at the stack.
Ports: ``FINETUNE_ASSETS_STACK_PORT`` (default 47100) and the next ones (see ``Ports``).

PostgreSQL refuses to run as root: as root its programs run as the ``postgres`` user the Debian package
creates, which then needs to reach the stack folder (a folder under /root is not reachable; set
FINETUNE_ASSETS_STACK_DIR to e.g. /var/tmp/finetune-stack).
"""

import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from finetune_assets.config import default_home
from finetune_assets.launch import processes
from finetune_assets.launch.processes import Server

REPO = Path(__file__).resolve().parents[2]
PG_USER = "finetune"
# Multi-node Ray: set explicitly, since a process that started the embedded Ray (launch.ray_cluster sets it to
# 0 for loopback-only) passes its environment on, and a worker node then refuses to join ("not supported").
CLUSTER_MODE = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}
# A client of the stack's loopback cluster (a driver, `ray status`): without it Ray turns 127.0.0.1 into the
# host's address, where the stack's Ray does not listen.
LOOPBACK_CLIENT = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
# `ray start` that keeps the nodes on 127.0.0.1 (launch.ray_node)
RAY_NODE = [sys.executable, "-m", "finetune_assets.launch.ray_node"]
ORDER = [
    "postgres",
    "mlflow",
    "ray-head",
    "ray-worker",
    "dagster-code",
    "dagster-webserver",
    "dagster-daemon",
]


class StackError(RuntimeError):
    """The stack cannot start as configured; the message says what to install or change."""


@dataclass(frozen=True)
class Ports:
    """Every port the stack listens on, from one base: all on 127.0.0.1."""

    base: int

    @property
    def postgres(self) -> int:
        return self.base

    @property
    def mlflow(self) -> int:
        return self.base + 1

    @property
    def dagster_webserver(self) -> int:
        return self.base + 2

    @property
    def dagster_code(self) -> int:
        return self.base + 3

    @property
    def ray_gcs(self) -> int:
        return self.base + 4

    @property
    def ray_dashboard(self) -> int:
        return self.base + 5

    def ray_node(self, index: int) -> dict[str, int]:
        """The ports of Ray node ``index`` (0 = head): ten fixed ones and 40 worker ports each."""
        first = self.base + 10 + 10 * index
        workers = self.base + 100 + 40 * index
        return {
            "--node-manager-port": first,
            "--object-manager-port": first + 1,
            "--metrics-export-port": first + 2,
            "--dashboard-agent-listen-port": first + 3,
            "--dashboard-agent-grpc-port": first + 4,
            "--runtime-env-agent-port": first + 5,
            "--ray-client-server-port": first + 6,
            "--min-worker-port": workers,
            "--max-worker-port": workers + 39,
        }


@dataclass(frozen=True)
class Stack:
    """Where the stack lives and how it is reached."""

    root: Path
    ports: Ports
    home: Path
    gpu_pool_limit: int = 1
    worker_cpus: int | None = None

    @classmethod
    def from_env(cls) -> "Stack":
        home = default_home()
        root = Path(os.environ.get("FINETUNE_ASSETS_STACK_DIR") or home / "stack").resolve()
        return cls(
            root=root,
            ports=Ports(int(os.environ.get("FINETUNE_ASSETS_STACK_PORT", "47100"))),
            home=home,
            gpu_pool_limit=int(os.environ.get("FINETUNE_ASSETS_GPU_POOL_LIMIT", "1")),
            worker_cpus=int(os.environ["FINETUNE_ASSETS_STACK_CPUS"])
            if os.environ.get("FINETUNE_ASSETS_STACK_CPUS")
            else None,
        )

    @property
    def ray_temp(self) -> Path:
        # Ray's Unix sockets live under its temp dir and must stay under 108 characters: a short path
        digest = hashlib.sha1(str(self.root).encode()).hexdigest()[:10]
        return Path("/tmp") / f"fa-stack-{digest}"

    @property
    def dagster_home(self) -> Path:
        return self.root / "dagster"

    @property
    def workspace(self) -> Path:
        return self.root / "workspace.yaml"

    @property
    def ray_token_path(self) -> Path:
        return self.root / "secrets" / "ray_auth_token"

    def pg_url(self, database: str, driver: str = "") -> str:
        """``driver`` "+psycopg2" for SQLAlchemy (MLflow, dagster-postgres): SQLAlchemy 2.1 maps a bare
        postgresql:// to psycopg 3, which is not installed."""
        password = self.secrets()["postgres_password"]
        return f"postgresql{driver}://{PG_USER}:{password}@127.0.0.1:{self.ports.postgres}/{database}"

    def secrets(self) -> dict:
        path = self.root / "secrets" / "secrets.json"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            values = {"postgres_password": secrets.token_hex(16)}
            _write_private(path, json.dumps(values))
        return json.loads(path.read_text())

    def client_env(self) -> dict[str, str]:
        """What a process needs to use the stack: the Dagster code server, its runs, a user's shell."""
        return {
            "FINETUNE_ASSETS_HOME": str(self.home),
            "DAGSTER_HOME": str(self.dagster_home),
            "DAGSTER_PG_URL": self.pg_url("dagster", "+psycopg2"),
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{self.ports.mlflow}",
            "FINETUNE_ASSETS_REQUEST_LOG": self.pg_url("serving", "+psycopg2"),
            "FINETUNE_ASSETS_RAY_ADDRESS": f"127.0.0.1:{self.ports.ray_gcs}",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.ray_token_path),
            "RAY_USAGE_STATS_ENABLED": "0",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DAGSTER_DISABLE_TELEMETRY": "1",
            "TOKENIZERS_PARALLELISM": "false",
            **LOOPBACK_CLIENT,
        }


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    tmp.replace(path)


def _bin(name: str) -> str:
    """A console script of this interpreter's environment (dagster, mlflow, ray)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise StackError(f"{name} is not installed in {path.parent}: run `bash scripts/setup.sh --stack`")
    return str(path)


def servers(stack: Stack) -> list[Server]:
    """The stack's servers, in start order."""
    p = stack.ports
    py_env = {**stack.client_env(), "PYTHONPATH": str(REPO)}
    # Token auth guards every Ray port, and the nodes stay on loopback: launch.ray_node is `ray start` without
    # its rewrite of 127.0.0.1 to the host's address (which multi-node mode does).
    ray_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(stack.ray_token_path),
               "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO), **CLUSTER_MODE}  # fmt: skip
    ray_stop = {"signal_leader_only": True, "stop_timeout_s": 60.0}
    ray_common = ["--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    cpus = stack.worker_cpus or os.cpu_count() or 1
    dagster_env = {k: v for k, v in py_env.items() if k != "FINETUNE_ASSETS_RAY_ADDRESS"}
    return [
        _postgres_server(stack),
        Server("mlflow", [_bin("mlflow"), "server", "--backend-store-uri", stack.pg_url("mlflow", "+psycopg2"),
                          "--artifacts-destination", str(stack.root / "mlflow-artifacts"), "--serve-artifacts",
                          "--host", "127.0.0.1", "--port", str(p.mlflow), "--workers", "1"],
               env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"},
               ready_port=p.mlflow),
        Server("ray-head", [*RAY_NODE, "start", "--head", f"--port={p.ray_gcs}", "--num-cpus=0",
                            "--dashboard-host=127.0.0.1", f"--dashboard-port={p.ray_dashboard}",
                            f"--temp-dir={stack.ray_temp}", "--object-store-memory=536870912", *ray_common,
                            *_flags(p.ray_node(0))],
               env=ray_env, ready_port=p.ray_gcs, **ray_stop),
        Server("ray-worker", [*RAY_NODE, "start", f"--address=127.0.0.1:{p.ray_gcs}", f"--num-cpus={cpus}",
                              "--object-store-memory=536870912", *ray_common, *_flags(p.ray_node(1))],
               env=ray_env, ready_port=p.ray_node(1)["--node-manager-port"], **ray_stop),
        Server("dagster-code", [_bin("dagster"), "api", "grpc", "-m", "finetune_assets.definitions",
                                "-h", "127.0.0.1", "-p", str(p.dagster_code),
                                "--location-name", "finetune_assets"],
               env=py_env, ready_port=p.dagster_code, cwd=str(REPO)),
        Server("dagster-webserver", [_bin("dagster-webserver"), "-h", "127.0.0.1",
                                     "-p", str(p.dagster_webserver), "-w", str(stack.workspace)],
               env=dagster_env, ready_port=p.dagster_webserver),
        Server("dagster-daemon", [_bin("dagster-daemon"), "run", "-w", str(stack.workspace)],
               env=dagster_env, settle_s=5.0),
    ]  # fmt: skip


def _flags(options: dict[str, int]) -> list[str]:
    return [f"{flag}={value}" for flag, value in options.items()]


def _postgres_server(stack: Stack) -> Server:
    data = stack.root / "postgres" / "data"
    sockets = stack.root / "postgres" / "sockets"
    argv = [str(_pg_bin("postgres")), "-D", str(data), "-p", str(stack.ports.postgres),
            "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={sockets}"]  # fmt: skip
    return Server(
        "postgres", _as_postgres_user(argv), ready_port=stack.ports.postgres, stop_signal=signal.SIGINT
    )


def _pg_bin(name: str) -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if not found:
        raise StackError(
            "PostgreSQL is not installed: run `bash scripts/setup.sh --stack` (Debian's postgresql package)"
        )
    return found[-1]


def _as_postgres_user(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def init_postgres(stack: Stack) -> None:
    """initdb once (password auth on TCP, the password in the stack's secrets); no-op when initialized."""
    data = stack.root / "postgres" / "data"
    if (data / "PG_VERSION").exists():
        return
    sockets = stack.root / "postgres" / "sockets"
    for folder in (data, sockets):
        folder.mkdir(parents=True, exist_ok=True)
    pwfile = stack.root / "postgres" / "pwfile"
    _write_private(pwfile, stack.secrets()["postgres_password"])
    if os.geteuid() == 0:
        for path in (data, sockets, pwfile):
            shutil.chown(path, "postgres", "postgres")
        reach = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-w", str(data)], check=False)
        if reach.returncode != 0:
            raise StackError(
                f"the postgres user cannot reach {data}: set FINETUNE_ASSETS_STACK_DIR to a folder every user "
                "can traverse (e.g. /var/tmp/finetune-stack)"
            )
    data.chmod(0o700)
    argv = [str(_pg_bin("initdb")), "-D", str(data), "-U", PG_USER, f"--pwfile={pwfile}",
            "--auth-local=trust", "--auth-host=scram-sha-256", "--no-locale", "-E", "UTF8"]  # fmt: skip
    try:
        done = subprocess.run(_as_postgres_user(argv), capture_output=True, text=True, check=False)
    finally:
        pwfile.unlink(missing_ok=True)
    if done.returncode != 0:
        shutil.rmtree(data, ignore_errors=True)  # a half-made cluster would be taken for a finished one
        raise StackError(f"initdb failed: {done.stderr.strip() or done.stdout.strip()}")


def create_databases(stack: Stack, names=("dagster", "mlflow", "serving")) -> None:
    import psycopg2

    conn = psycopg2.connect(stack.pg_url("postgres"))
    conn.autocommit = True
    with conn.cursor() as cur:
        for name in names:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()


def write_config(stack: Stack) -> None:
    """The Dagster instance (Postgres variant), the workspace (the gRPC code server), the Ray token, env.sh."""
    stack.dagster_home.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "dagster.postgres.yaml", stack.dagster_home / "dagster.yaml")
    workspace = (
        "# written by `finetune-assets stack up`: the code location is a gRPC server of the stack\n"
        "load_from:\n"
        "  - grpc_server:\n"
        "      host: 127.0.0.1\n"
        f"      port: {stack.ports.dagster_code}\n"
        "      location_name: finetune_assets\n"
    )
    stack.workspace.write_text(workspace)
    if not stack.ray_token_path.exists():
        stack.ray_token_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_private(stack.ray_token_path, secrets.token_hex(32))
    exports = "".join(f"export {k}='{v}'\n" for k, v in stack.client_env().items())
    _write_private(stack.root / "env.sh", "# source this file to point the CLI at the stack\n" + exports)


def up(stack: Stack) -> dict:
    """Start every service that is not running; returns status(). Stops what it started when one fails."""
    stack.root.mkdir(parents=True, exist_ok=True)
    init_postgres(stack)
    write_config(stack)
    started = []
    try:
        for server in servers(stack):
            if processes.running_pid(stack.root, server.name) is None:
                started.append(server.name)
            processes.start(server, stack.root)
            if server.name == "postgres":
                create_databases(stack)
        _set_pool_limit(stack)
    except Exception:
        by_name = {server.name: server for server in servers(stack)}
        for name in reversed(started):
            processes.stop(stack.root, by_name[name])
        raise
    return status(stack)


def _set_pool_limit(stack: Stack) -> None:
    """The `gpu` concurrency pool's limit: training materializations queue beyond it."""
    env = {**os.environ, **stack.client_env()}
    argv = [_bin("dagster"), "instance", "concurrency", "set", "gpu", str(stack.gpu_pool_limit)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise StackError(f"could not set the gpu pool limit: {done.stderr.strip()[-500:]}")


def down(stack: Stack) -> list[str]:
    """Stop, in reverse start order, every service this stack folder recorded. Returns the ones stopped."""
    by_name = {server.name: server for server in servers(stack)}
    return [name for name in reversed(ORDER) if processes.stop(stack.root, by_name[name])]


def status(stack: Stack) -> dict:
    """{service: {"pid", "port", "up"}} for every service, and the URLs a user opens."""
    ports = {"postgres": stack.ports.postgres, "mlflow": stack.ports.mlflow,
             "ray-head": stack.ports.ray_gcs, "dagster-code": stack.ports.dagster_code,
             "dagster-webserver": stack.ports.dagster_webserver}  # fmt: skip
    services = {}
    for name in ORDER:
        pid = processes.running_pid(stack.root, name)
        port = ports.get(name)
        services[name] = {
            "pid": pid,
            "port": port,
            "up": pid is not None and (port is None or processes.port_open(port)),
        }
    return {
        "services": services,
        "urls": {
            "dagster": f"http://127.0.0.1:{stack.ports.dagster_webserver}",
            "mlflow": f"http://127.0.0.1:{stack.ports.mlflow}",
            # ray[data,train] has no dashboard (its HTTP server needs ray[default]): the GCS address to join
            "ray": f"127.0.0.1:{stack.ports.ray_gcs}",
        },
        "env_file": str(stack.root / "env.sh"),
        "checked": time.time(),
    }
