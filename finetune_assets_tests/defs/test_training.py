"""The training assets' log lines (the steps stream in while the Ray job runs)."""

from finetune_assets.defs.training import step_line


def test_a_step_reads_as_one_line_with_what_it_has():
    full = {"step": 20, "max_steps": 120, "loss": 1.23456, "learning_rate": 1.9e-4, "tokens_per_s": 412.4}
    assert step_line("sft", full) == "sft step 20/120 loss 1.2346 lr 1.90e-04 412 tok/s"
    assert step_line("dpo", {"step": 3, "loss": 0.69}) == "dpo step 3/? loss 0.6900"
