"""SFT through Ray Train on an embedded, loopback-only local Ray (1 CPU worker, ~30-45 s of Ray start-up)."""

import json
import time
from pathlib import Path

import pytest
import ray  # imported before ensure_ray on purpose: its settings must still apply (auth mode, loopback)

from finetune_assets.config import ScalingConfig, TrainConfig
from finetune_assets.launch.ray_cluster import default_temp_dir, ensure_ray
from finetune_assets.launch.ray_train import TrainingError, _decode, _encode, forward_steps, run_training


def _sft_kwargs(base_dir, rows, cfg, out) -> dict:
    return {"base_dir": base_dir, "train_rows": rows, "eval_rows": [], "cfg": cfg, "out_dir": out}


def test_config_round_trip(tmp_path):
    cfg = TrainConfig(max_steps=3, lora_target_modules=["q_proj", "v_proj"])
    encoded = _encode({"base_dir": tmp_path, "cfg": cfg, "out_dir": tmp_path / "o", "train_rows": [{"a": 1}]})
    assert json.loads(json.dumps(encoded)) == encoded  # plain data only
    decoded = _decode("sft", encoded)
    assert decoded["cfg"] == cfg and decoded["base_dir"] == tmp_path and decoded["train_rows"] == [{"a": 1}]


def test_ensure_ray_is_private_and_idempotent(embedded_ray):
    assert embedded_ray["embedded"] is True and embedded_ray["num_cpus"] == 2
    assert embedded_ray["address"].startswith("127.0.0.1:") and embedded_ray["node_ips"] == ["127.0.0.1"]
    assert ray.is_initialized()
    # Ray may already run from an earlier test (one ray.init per process), started under another home.
    assert Path(embedded_ray["temp_dir"]).name.startswith("fa-ray-") and len(embedded_ray["temp_dir"]) < 40
    assert Path(str(default_temp_dir())).parent == Path(embedded_ray["temp_dir"]).parent
    assert ensure_ray()["address"] == embedded_ray["address"]
    with pytest.raises(ValueError, match="auto"):
        ensure_ray("auto")


def test_sft_on_ray_worker(embedded_ray, tmp_path, tiny_model_dir, tiny_chat_rows):
    from transformers import AutoModelForCausalLM

    cfg = TrainConfig(
        max_steps=12, learning_rate=1e-2, per_device_batch_size=4, lora_dropout=0.0, max_length=128
    )
    out = tmp_path / "inst"
    streamed = []
    summary = run_training(
        "sft",
        _sft_kwargs(tiny_model_dir, tiny_chat_rows, cfg, out),
        ScalingConfig(num_workers=1),
        storage_dir=tmp_path / "ray_storage",
        on_step=streamed.append,
    )
    losses = summary["losses"]
    # every logged step reached the driver's callback, with the loss the summary holds
    assert [s["loss"] for s in streamed] == pytest.approx(losses) and streamed[-1]["step"] == 12
    assert summary["ray"]["embedded"] is True and summary["ray"]["address"] == embedded_ray["address"]
    assert summary["ray"]["job_id"]  # this driver's Ray job
    assert summary["method"] == "sft" and summary["steps"] == 12 and summary["num_workers"] == 1
    assert sum(losses[-3:]) < sum(losses[:3]), losses
    assert summary["changed_params"] > 0 and summary["tokens_per_s"] > 0
    assert summary["ray"]["num_workers"] == 1
    assert (out / "adapter" / "adapter_config.json").is_file()
    AutoModelForCausalLM.from_pretrained(out / "merged")
    assert (tmp_path / "ray_storage" / summary["ray"]["run_name"]).is_dir()

    # a failing worker surfaces its traceback in the driver
    with pytest.raises(TrainingError, match="(?s)dpo training failed.*Traceback"):
        run_training(
            "dpo",
            {"model_dir": tmp_path / "missing", "rows": [], "cfg": cfg, "out_dir": tmp_path / "never"},
            ScalingConfig(num_workers=1, max_failures=0),
            storage_dir=tmp_path / "ray_storage",
        )
    assert not (tmp_path / "never").exists()


def test_killed_worker_resumes_from_its_checkpoint(embedded_ray, tmp_path, tiny_model_dir, tiny_chat_rows):
    """SIGKILL the training worker mid-run: Ray Train restarts it, it resumes from the latest checkpoint
    (not from step 0) and the run still ends with every step trained and a complete model folder."""
    import os
    import signal
    import threading
    import time

    from finetune_assets.phases.training.artifacts import progress_path

    cfg = TrainConfig(
        max_steps=30, learning_rate=1e-2, per_device_batch_size=4, lora_dropout=0.0, max_length=128,
        checkpoint_steps=5,
    )  # fmt: skip
    out = tmp_path / "inst"
    killed: list[dict] = []

    def kill_after_step(step: int) -> None:
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            try:
                progress = json.loads(progress_path(out).read_text())
            except (OSError, ValueError):
                progress = {}
            if progress.get("step", 0) >= step:
                os.kill(progress["pid"], signal.SIGKILL)
                killed.append(progress)
            time.sleep(0.02)

    killer = threading.Thread(target=kill_after_step, args=(12,), daemon=True)
    killer.start()
    summary = run_training(
        "sft",
        _sft_kwargs(tiny_model_dir, tiny_chat_rows, cfg, out),
        ScalingConfig(num_workers=1, max_failures=2),
        storage_dir=tmp_path / "ray_storage",
    )
    killer.join(timeout=1)
    assert killed, "the worker was never killed: the run finished before step 12"
    assert 5 <= summary["resumed_from_step"] <= killed[0]["step"], (summary["resumed_from_step"], killed)
    assert summary["resumed_from_step"] % 5 == 0
    assert summary["steps"] == 30 and len(summary["losses"]) == 30  # earlier steps' logs came back too
    assert json.loads(progress_path(out).read_text())["pid"] != killed[0]["pid"]  # a new worker finished
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "merged" / "config.json").is_file()


def test_forward_steps_passes_new_lines_while_the_body_runs_and_skips_older_ones(tmp_path):
    log = tmp_path / ".inst.steps.jsonl"
    log.write_text(json.dumps({"step": 1, "loss": 9.0}) + "\n")  # an earlier run's line
    got = []
    with forward_steps(log, got.append, interval_s=0.05):
        with open(log, "a") as out:
            out.write(json.dumps({"step": 1, "loss": 2.5}) + "\n")
            out.write('{"step": 2, "lo')  # half a line: held back until it is complete
            out.flush()
            deadline = time.monotonic() + 10
            while not got and time.monotonic() < deadline:
                time.sleep(0.02)
            assert got == [{"step": 1, "loss": 2.5}]  # forwarded before the body ended
            out.write('ss": 2.0}\n')
    assert got == [{"step": 1, "loss": 2.5}, {"step": 2, "loss": 2.0}]
