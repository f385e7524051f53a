"""A study on the embedded Ray: every trial a real SFT run; killed mid-study and started again, it reruns no
finished trial."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from finetune_assets.config import TrainConfig
from finetune_assets.config_sweep import SearchDimension, SweepConfig
from finetune_assets.launch.ray_tune import STARTS_FILE, run_study

CFG = TrainConfig(max_steps=4, learning_rate=1e-2, per_device_batch_size=4, lora_dropout=0.0, max_length=128,
                  precision="fp32", lora_r=4, checkpoint_steps=0)  # fmt: skip
SWEEP = SweepConfig(trials=2, max_steps=4, eval_steps=2, grace_period=1,
                    space={"learning_rate": SearchDimension(loguniform=(1e-4, 3e-2))})  # fmt: skip

CHILD = """
import json, sys
from pathlib import Path
from finetune_assets.config import TrainConfig
from finetune_assets.config_sweep import SweepConfig
from finetune_assets.launch.ray_tune import run_study
args = json.loads(Path(sys.argv[1]).read_text())
run_study(Path(args["model"]), args["rows"], args["rows"][:4], TrainConfig(**args["cfg"]), SweepConfig(**args["sweep"]),
          Path(args["study"]), ray_address=args["address"])
"""


def _starts(study: Path) -> list[str]:
    path = study / STARTS_FILE
    return path.read_text().split() if path.exists() else []


def test_a_killed_study_resumes_without_rerunning_finished_trials(tmp_path, tiny_model_dir, tiny_chat_rows,
                                                                  embedded_ray):  # fmt: skip
    study = tmp_path / "study"
    args = {"model": str(tiny_model_dir), "rows": tiny_chat_rows, "cfg": CFG.model_dump(),
            "sweep": SWEEP.model_dump(), "study": str(study), "address": embedded_ray["address"]}  # fmt: skip
    (tmp_path / "args.json").write_text(json.dumps(args))
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "args.json")], start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while len(_starts(study)) < 2 and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.5)  # one trial at a time: the second starts once the first has finished
        assert len(_starts(study)) >= 2, "the study did not get to its second trial"
        time.sleep(1.0)
    finally:
        os.killpg(child.pid, signal.SIGKILL)  # the study's driver, by its process group
        child.wait(30)
    finished_before = _starts(study)[0]
    trials = run_study(tiny_model_dir, tiny_chat_rows, tiny_chat_rows[:4], CFG, SWEEP, study,
                       ray_address=embedded_ray["address"])  # fmt: skip
    starts = _starts(study)
    assert starts.count(finished_before) == 1, f"a finished trial ran again: {starts}"
    assert len(set(starts)) == SWEEP.trials, f"the restored study is the same study, not a new one: {starts}"
    assert len(trials) == SWEEP.trials and all(t["status"] == "ok" for t in trials)
    assert all(t["evaluations"] >= 1 and t["curve"] for t in trials), (
        "every trial reported its validation loss"
    )
