"""The precision probe: bf16 only where it is native, fp32 with a reason elsewhere."""

import pytest

from finetune_assets.phases.inference import hardware


@pytest.fixture
def cpu_without_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    hardware.bf16_support.cache_clear()
    yield
    hardware.bf16_support.cache_clear()


def _flags(monkeypatch, tmp_path, flags: str):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 avx2 {flags}\n")
    monkeypatch.setattr(hardware, "cpu_flags", lambda: hardware._read_flags(cpuinfo))


def test_auto_picks_bf16_on_a_cpu_with_avx512_bf16(cpu_without_cuda, monkeypatch, tmp_path):
    _flags(monkeypatch, tmp_path, "avx512f avx512_bf16")
    assert hardware.resolve_precision("auto") == ("bf16", "CPU has avx512_bf16")


def test_auto_falls_back_to_fp32_and_says_why(cpu_without_cuda, monkeypatch, tmp_path, caplog):
    import logging

    _flags(monkeypatch, tmp_path, "avx512f")
    with caplog.at_level(logging.INFO, logger=hardware.__name__):
        precision, why = hardware.resolve_precision("auto")
    assert precision == "fp32" and "lacks avx512_bf16 and amx_bf16" in why
    assert "fp32" in caplog.text and "lacks" in caplog.text
    assert hardware.resolve_precision("bf16")[0] == "bf16"  # an explicit choice is obeyed
    assert hardware.resolve_precision("fp32") == ("fp32", "configured fp32")


def test_cpu_flags_of_a_missing_file_are_empty(tmp_path):
    assert hardware._read_flags(tmp_path / "absent") == set()


def test_compute_threads():
    assert hardware.compute_threads(3) == 3
    assert hardware.compute_threads() >= 1
