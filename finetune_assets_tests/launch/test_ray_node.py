"""launch.ray_node: `ray start` that keeps a loopback node address (the stack's head and worker on 127.0.0.1;
test_stack.py checks what they listen on)."""

from finetune_assets.launch import ray_node


def test_loopback_addresses_stay_loopback_and_others_resolve_as_ray_does(monkeypatch):
    from ray._private import services

    monkeypatch.setattr(
        services, "resolve_ip_for_localhost", services.resolve_ip_for_localhost
    )  # restored after
    monkeypatch.setattr(
        services, "get_node_ip_address", lambda address=None: "192.0.2.7"
    )  # the host's address
    assert services.resolve_ip_for_localhost("127.0.0.1") == "192.0.2.7"  # what plain `ray start` does
    ray_node.keep_loopback()
    ray_node.keep_loopback()  # idempotent: one wrapper, not two
    for host in ("127.0.0.1", "localhost", "::1"):
        assert services.resolve_ip_for_localhost(host) == host
    assert (
        services.canonicalize_bootstrap_address("127.0.0.1:6379") == "127.0.0.1:6379"
    )  # a worker's --address
    assert services.resolve_ip_for_localhost("10.1.2.3") == "10.1.2.3"
