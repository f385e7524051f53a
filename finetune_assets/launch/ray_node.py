"""`ray start` for a head or worker node that stays on loopback: ``python -m finetune_assets.launch.ray_node
start --node-ip-address=127.0.0.1 ...`` (the same arguments as `ray start`).

Ray's own `ray start` rewrites a loopback --node-ip-address and --address to the host's address whenever
multi-node mode is on (``services.resolve_ip_for_localhost``), and multi-node mode is what lets a worker node
join. The node then registers the host's address, and its agents listen on the host's interface. Here a loopback
address is kept as given, so the node registers 127.0.0.1 and Ray's servers listen on loopback only. Any other
address passes through unchanged, so the same entry point starts nodes of a real multi-host cluster.
"""

import sys

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def keep_loopback() -> None:
    """Make Ray leave loopback addresses as they are (idempotent)."""
    from ray._private import services

    original = services.resolve_ip_for_localhost
    if getattr(original, "keeps_loopback", False):
        return

    def resolve(host: str) -> str:
        return host if host in LOOPBACK else original(host)

    resolve.keeps_loopback = True
    services.resolve_ip_for_localhost = resolve


def main(argv: list[str] | None = None) -> None:
    keep_loopback()
    from ray.scripts.scripts import main as ray_cli

    sys.argv = ["ray", *(sys.argv[1:] if argv is None else argv)]
    ray_cli()


if __name__ == "__main__":
    main()
