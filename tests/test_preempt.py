"""A stop signal (a cluster's preemption or time-limit warning) becomes a checkpoint, an exit, and an exact resume."""

import os
import signal

import pytest
import torch
from helpers import tiny_pretrain, weights

from openmae.config import ConfigError
from openmae.engine.checkpoint import CheckpointManager
from openmae.engine.logging import read_metrics
from openmae.engine.preempt import StopSignals
from openmae.engine.pretrain import pretrain


def test_signals_are_recorded_not_fatal_and_the_handlers_come_back():
    seen = []
    before = signal.signal(signal.SIGUSR1, lambda n, f: seen.append(n))
    try:
        with StopSignals(["SIGUSR1", "SIGTERM"]) as stops:
            os.kill(os.getpid(), signal.SIGUSR1)
            assert stops.received == "SIGUSR1" and seen == []  # recorded, the process goes on
            os.kill(os.getpid(), signal.SIGTERM)  # torchrun forwarding the scheduler's signal: noted, not fatal
            os.kill(os.getpid(), signal.SIGUSR1)
            assert stops.received == "SIGUSR1" and seen == []
        os.kill(os.getpid(), signal.SIGUSR1)
        assert seen == [signal.SIGUSR1]  # the handler that was there before is back
    finally:
        signal.signal(signal.SIGUSR1, before)


def test_unknown_signal_name_is_a_config_error(tmp_path, datasets):
    with pytest.raises(ConfigError, match=r"train.stop_signals.*SIGNOPE"):
        tiny_pretrain(tmp_path, datasets, "train.stop_signals=[SIGTERM, SIGNOPE]")


def _signal_after_step(monkeypatch, step: int, number: int) -> None:
    real_step = torch.optim.AdamW.step
    calls = {"n": 0}

    def step_then_signal(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == step:
            os.kill(os.getpid(), number)
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step_then_signal)


@pytest.mark.parametrize("signal_step", [6, 4])  # mid-epoch 2; the last step of epoch 1 (4 steps an epoch)
def test_stop_signal_saves_then_resume_is_bit_exact(tmp_path, datasets, monkeypatch, signal_step):
    pretrain(tiny_pretrain(tmp_path / "full", datasets))
    handler_before = signal.getsignal(signal.SIGTERM)
    with monkeypatch.context() as patch:
        _signal_after_step(patch, signal_step, signal.SIGTERM)
        result = pretrain(tiny_pretrain(tmp_path / "cut", datasets))
    assert result["stopped_by"] == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is handler_before
    (ckpt,) = CheckpointManager(tmp_path / "cut").list()
    state = CheckpointManager.load(ckpt)
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (signal_step, (signal_step - 1) // 4,
                                                                        (signal_step - 1) % 4 + 1)
    pretrain(tiny_pretrain(tmp_path / "cut", datasets, "train.resume=auto"))
    a, b = weights(tmp_path / "full"), weights(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = lambda d: [{k: v for k, v in r.items() if k not in ("time", "images_per_s")}  # noqa: E731
                      for r in read_metrics(d / "metrics.jsonl")]
    assert rows(tmp_path / "full") == rows(tmp_path / "cut")  # every step and epoch line once, the same numbers


def test_no_stop_signals_leaves_the_handlers_alone(tmp_path, datasets, monkeypatch):
    seen = []
    before = signal.signal(signal.SIGUSR1, lambda n, f: seen.append(n))
    try:
        _signal_after_step(monkeypatch, 2, signal.SIGUSR1)
        result = pretrain(tiny_pretrain(tmp_path / "r", datasets, "train.stop_signals=[]", "train.epochs=1"))
    finally:
        signal.signal(signal.SIGUSR1, before)
    assert "stopped_by" not in result and seen == [signal.SIGUSR1]
