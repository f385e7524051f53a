"""bench/learning_curve.py: the adapter is saved at each point's share of the epoch, and training stops
after one epoch (the script's scoring is phases.evaluation.variant's, tested there)."""

from types import SimpleNamespace

from finetune_assets_tests.test_bench import _load


def test_adapters_saved_at_each_points_share_of_the_epoch(tmp_path):
    bench = _load("learning_curve")
    saver = bench.adapter_saver(tmp_path, [0, 240, 480, 960], rows=960)
    saver.on_train_begin(None, None, None, train_dataloader=range(12))
    assert saver.save_at == {3: 240, 6: 480, 12: 960}

    saved = []
    model = SimpleNamespace(save_pretrained=lambda path: saved.append(path.name))
    for step in range(1, 13):
        state = SimpleNamespace(global_step=step, num_input_tokens_seen=step * 10)
        control = SimpleNamespace(should_training_stop=False)
        saver.on_step_end(None, state, control, model=model)
        assert control.should_training_stop == (step == 12)
    assert saved == ["adapter-240", "adapter-480", "adapter-960"]
    assert saver.saved[480]["steps"] == 6 and saver.saved[480]["train_tokens"] == 60
