"""A stop signal (a cluster's preemption or time-limit warning) becomes a checkpoint, an exit, and an exact resume."""

import logging
import os
import re
import signal
import time

import pytest
import torch
from helpers import tiny_pretrain, weights

from openmae.config import ConfigError
from openmae.engine.checkpoint import CheckpointManager
from openmae.engine.logging import read_metrics
from openmae.engine.preempt import StopSignals, torchrun_grace_warning
from openmae.engine.pretrain import pretrain


def test_signals_are_recorded_not_fatal_and_the_handlers_come_back():
    seen = []
    before = signal.signal(signal.SIGUSR1, lambda n, f: seen.append(n))
    try:
        with StopSignals(["SIGUSR1", "SIGTERM"]) as stops:
            os.kill(os.getpid(), signal.SIGUSR1)
            assert stops.received == "SIGUSR1" and seen == []  # recorded, the process goes on
            first = stops.received_at
            assert first is not None and 0 <= time.monotonic() - first < 5
            os.kill(os.getpid(), signal.SIGTERM)  # torchrun forwarding the scheduler's signal: noted, not fatal
            os.kill(os.getpid(), signal.SIGUSR1)
            assert stops.received == "SIGUSR1" and stops.received_at == first and seen == []
        os.kill(os.getpid(), signal.SIGUSR1)
        assert seen == [signal.SIGUSR1]  # the handler that was there before is back
    finally:
        signal.signal(signal.SIGUSR1, before)


def test_ctrl_c_once_saves_twice_stops_at_once_and_an_ignored_one_stays_ignored(caplog):
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, whoever started the suite
    try:
        with caplog.at_level(logging.WARNING, logger="openmae.train"):
            with StopSignals(["SIGTERM", "SIGINT"]) as stops:
                os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C: recorded, the run goes on to its save
                assert stops.received == "SIGINT"
                with pytest.raises(KeyboardInterrupt):
                    os.kill(os.getpid(), signal.SIGINT)  # the second: at once, as Python would
        assert "Ctrl-C (SIGINT) received: saving a checkpoint" in caplog.text
        assert "Ctrl-C again stops at once" in caplog.text
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with StopSignals(["SIGTERM", "SIGINT"]) as stops:  # a SIGTERM first, then Ctrl-C: the user will not wait
            os.kill(os.getpid(), signal.SIGTERM)
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
            assert stops.received == "SIGTERM"
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # started as a shell script's background job
        with StopSignals(["SIGINT"]) as stops:
            os.kill(os.getpid(), signal.SIGINT)
            assert stops.received is None and signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_torchrun_grace_warning_only_under_torchrun_past_half_its_timeout():
    assert torchrun_grace_warning(100.0, {}) is None  # not under torchrun: nobody kills the process
    run = {"TORCHELASTIC_RUN_ID": "job"}
    assert torchrun_grace_warning(15.0, run) is None  # half of torchrun's default 30 s
    warning = torchrun_grace_warning(16.0, run)
    assert warning is not None and "16.0 s" in warning and "30 s" in warning and "TORCH_ELASTIC_SHUTDOWN_TIMEOUT" in warning
    longer = {**run, "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "120"}
    assert torchrun_grace_warning(16.0, longer) is None
    assert "120 s" in torchrun_grace_warning(61.0, longer)
    assert torchrun_grace_warning(61.0, {**run, "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "soon"}) is None  # not a crash


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
def test_stop_signal_saves_then_resume_is_bit_exact(tmp_path, datasets, monkeypatch, caplog, signal_step):
    pretrain(tiny_pretrain(tmp_path / "full", datasets))
    handler_before = signal.getsignal(signal.SIGTERM)
    with monkeypatch.context() as patch, caplog.at_level(logging.WARNING, logger="openmae.train"):
        _signal_after_step(patch, signal_step, signal.SIGTERM)
        # as under torchrun with no time to spare: the stop says how long it took and that torchrun may kill it
        patch.setenv("TORCHELASTIC_RUN_ID", "test")
        patch.setenv("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "0")
        result = pretrain(tiny_pretrain(tmp_path / "cut", datasets))
    assert result["stopped_by"] == "SIGTERM"
    assert re.search(rf"stopped by SIGTERM after step {signal_step}; checkpoint saved in .*, \d+\.\d s after the signal",
                     caplog.text)
    assert "torchrun kills its workers 0 s after it forwards a signal" in caplog.text
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


def test_a_stop_during_an_epoch_end_evaluation_cuts_it_short_and_resume_evaluates_again(tmp_path, datasets,
                                                                                        monkeypatch, caplog):
    import openmae.eval.features as features

    knn = ("pretrain.knn_every_epochs=1", "pretrain.knn_train_samples=64", "pretrain.knn_eval_samples=32")
    pretrain(tiny_pretrain(tmp_path / "full", datasets, *knn))
    real_tokens, calls = features.encoder_tokens, {"n": 0}

    def tokens_then_signal(*args, **kwargs):  # Ctrl-C during the first batch of epoch 2's kNN monitor
        calls["n"] += 1
        if calls["n"] == 2 + 1:  # the kNN after epoch 1 reads 64 training and 32 evaluation images: 2 batches
            os.kill(os.getpid(), signal.SIGINT)
        return real_tokens(*args, **kwargs)

    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, whoever started the suite
    try:
        with monkeypatch.context() as patch, caplog.at_level(logging.INFO):
            patch.setattr(features, "encoder_tokens", tokens_then_signal)
            result = pretrain(tiny_pretrain(tmp_path / "cut", datasets, *knn))
    finally:
        signal.signal(signal.SIGINT, before)
    assert result["stopped_by"] == "SIGINT"
    assert calls["n"] == 3  # cut short before the next batch: not the rest of the kNN's 64 + 32 images
    assert re.search(r"stopped by SIGINT during the evaluation after epoch 2 \(step 8\), which a resumed run does again; "
                     r"checkpoint saved in .*, \d+\.\d s after the signal", caplog.text)
    assert "epoch 2 kNN" not in caplog.text and "epoch 1 kNN" in caplog.text
    (ckpt,) = CheckpointManager(tmp_path / "cut").list()
    state = CheckpointManager.load(ckpt)
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (8, 1, 4)  # as at epoch 2's last step
    pretrain(tiny_pretrain(tmp_path / "cut", datasets, *knn, "train.resume=auto"))
    a, b = weights(tmp_path / "full"), weights(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = lambda d: [{k: v for k, v in r.items() if k not in ("time", "images_per_s")}  # noqa: E731
                      for r in read_metrics(d / "metrics.jsonl")]
    assert rows(tmp_path / "full") == rows(tmp_path / "cut")  # epoch 2's kNN once, the same numbers


def test_a_stop_during_the_evaluation_of_the_last_epoch_that_it_finishes_ends_the_run_as_usual(tmp_path, datasets,
                                                                                               monkeypatch):
    import openmae.eval.features as features

    knn = ("pretrain.knn_every_epochs=1", "pretrain.knn_train_samples=64", "pretrain.knn_eval_samples=32")
    real_tokens, calls = features.encoder_tokens, {"n": 0}

    def tokens_then_signal(*args, **kwargs):  # a SIGTERM during the last batch of the last epoch's kNN
        calls["n"] += 1
        out = real_tokens(*args, **kwargs)
        if calls["n"] == 6:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(features, "encoder_tokens", tokens_then_signal)
    result = pretrain(tiny_pretrain(tmp_path / "r", datasets, *knn))
    assert "stopped_by" not in result and "knn_top1" in result and calls["n"] == 6
    assert CheckpointManager.load(CheckpointManager(tmp_path / "r").list()[-1])["epoch"] == 3


def test_a_stop_while_the_run_is_prepared_stops_before_the_first_step(tmp_path, datasets, monkeypatch, caplog):
    """A signal while the data and the model are prepared (a volume survey, a checkpoint read: minutes) stops the run
    before its first step, which may compile for minutes more; it took that step and saved it before. Fresh: nothing
    saved, and --resume auto starts it; resumed: its checkpoints untouched, and the next resume ends as an
    uninterrupted run."""
    from openmae.engine.pretrain import PretrainTask

    pretrain(tiny_pretrain(tmp_path / "full", datasets))
    real_data, real_step, steps = PretrainTask.train_data, torch.optim.AdamW.step, {"n": 0}

    def data_then_signal(self, info):  # the data built, the model and the checkpoint not yet
        built = real_data(self, info)
        os.kill(os.getpid(), signal.SIGTERM)
        return built

    def counted_step(self, *args, **kwargs):
        steps["n"] += 1
        return real_step(self, *args, **kwargs)

    run = tmp_path / "cut"
    with monkeypatch.context() as patch, caplog.at_level(logging.WARNING, logger="openmae.train"):
        patch.setattr(PretrainTask, "train_data", data_then_signal)
        patch.setattr(torch.optim.AdamW, "step", counted_step)
        assert pretrain(tiny_pretrain(run, datasets))["stopped_by"] == "SIGTERM"
        assert steps["n"] == 0 and CheckpointManager(run).list() == []
        assert "stopped by SIGTERM before the first step, while the run was prepared: nothing new to save" in caplog.text
        patch.setattr(PretrainTask, "train_data", real_data)
        assert pretrain(tiny_pretrain(run, datasets, "train.resume=auto", "train.halt_after_steps=6"))["halted"]
        (saved,) = CheckpointManager(run).list()
        patch.setattr(PretrainTask, "train_data", data_then_signal)
        assert pretrain(tiny_pretrain(run, datasets, "train.resume=auto"))["stopped_by"] == "SIGTERM"
        # (the optimizer's state is loaded through a step of lr 0, torch's way: steps are not counted here)
        assert max(r["step"] for r in read_metrics(run / "metrics.jsonl")) == 6
        assert CheckpointManager(run).list() == [saved]
        assert f"--resume=auto continues from {saved}" in caplog.text
    pretrain(tiny_pretrain(run, datasets, "train.resume=auto"))
    a, b = weights(tmp_path / "full"), weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
