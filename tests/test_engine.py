"""The training loop: exact resume, schedule, weight-decay groups, accumulation, non-finite losses."""

import math

import pytest
import torch
from helpers import tiny_pretrain, weights

import openmae
from openmae.config import ConfigError, load_config
from openmae.convert.checkpoints import StateDictMismatch
from openmae.convert.files import load_file
from openmae.engine.checkpoint import CheckpointError, CheckpointManager
from openmae.engine.logging import read_metrics
from openmae.engine.loop import NonFiniteLossError
from openmae.engine.optim import param_groups
from openmae.engine.pretrain import PretrainConfig, PretrainTask, pretrain
from openmae.engine.schedule import effective_lr, lr_at


def official_lr(epoch: float, lr: float, min_lr: float, warmup: float, epochs: int) -> float:
    """The official adjust_learning_rate, restated as the reference."""
    if epoch < warmup:
        return lr * epoch / warmup
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup) / (epochs - warmup)))


@pytest.mark.parametrize("epoch", [0.0, 0.37, 20.0, 39.99, 40.0, 41.5, 420.0, 799.9, 800.0])
def test_schedule_matches_official(epoch):
    assert lr_at(epoch, 2.4e-3, 1e-6, 40, 800) == pytest.approx(official_lr(epoch, 2.4e-3, 1e-6, 40, 800), rel=1e-12)
    assert lr_at(20.0, 1.0, 0.0, 40, 800) == pytest.approx(0.5)
    assert lr_at(420.0, 1.0, 0.0, 40, 800) == pytest.approx(0.5)


def test_lr_scaling_rule():
    assert effective_lr(1.5e-4, None, 64, 4, 16) == pytest.approx(1.5e-4 * 4096 / 256)
    assert effective_lr(1.5e-4, 3e-3, 64, 4, 16) == 3e-3


def test_no_decay_set_is_biases_norms_tokens_pos():
    model = openmae.create_model("mae_vit_debug_patch4_32")
    groups = param_groups(model, 0.05)
    no_decay = {n for g in groups if g["weight_decay"] == 0 for n in g["names"]}
    decay = {n for g in groups if g["weight_decay"] == 0.05 for n in g["names"]}
    names = dict(model.named_parameters())
    expected = {n for n in names if n.endswith(".bias") or ".norm" in f".{n}" or n.startswith(("norm.", "decoder_norm."))
                or n in ("cls_token", "mask_token")}
    assert no_decay == expected
    assert decay == {n for n in names if n.endswith(".weight") and names[n].ndim == 2 or n == "patch_embed.proj.weight"}
    assert "pos_embed" not in no_decay | decay and "decoder_pos_embed" not in no_decay | decay  # fixed, not trained
    # a learnable position embedding (fine-tuning) is not decayed either
    model.pos_embed.requires_grad_(True)
    assert "pos_embed" in {n for g in param_groups(model, 0.05) if g["weight_decay"] == 0 for n in g["names"]}


def test_resume_is_bit_exact(tmp_path, datasets):
    full = tiny_pretrain(tmp_path / "full", datasets)
    pretrain(full)
    cut = tiny_pretrain(tmp_path / "cut", datasets, "train.halt_after_steps=6")
    assert pretrain(cut)["halted"]
    assert [p.name for p in CheckpointManager(tmp_path / "cut").list()] == ["checkpoint-000000006.pth"]
    # resume with a different worker count: the data a step sees does not depend on it
    resumed = tiny_pretrain(tmp_path / "cut", datasets, "train.resume=auto", "data.num_workers=2")
    pretrain(resumed)
    a, b = weights(tmp_path / "full"), weights(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = lambda d: [(r["step"], r["loss"]) for r in read_metrics(d / "metrics.jsonl") if "loss" in r]
    assert losses(tmp_path / "full") == losses(tmp_path / "cut")
    assert len(losses(tmp_path / "full")) == 12


@pytest.mark.parametrize("before,after", [((16, 1), (8, 1)), ((8, 2), (16, 1)), ((16, 1), (12, 1)), ((8, 1), (8, 2))])
def test_a_resume_with_another_global_batch_goes_on_with_the_epochs_unused_images(before, after):
    """After b batches of B images on each of W processes the job has used the first b x B x W images of the
    epoch's order; a resume with another batch or process count starts at the first batch whose images are all
    unused: none skipped, fewer than one new global batch seen twice."""
    from openmae.data.loader import ResumableSampler
    from openmae.engine.checkpoint import resume_batch

    (batch, world), (new_batch, new_world), done = before, after, 3
    used = {i for r in range(world) for i in ResumableSampler(96, batch, 7, rank=r, world_size=world).epoch_indices(2)[:done * batch]}
    state = {"batch_in_epoch": done, "config": {"train": {"batch_size": batch}}, "rng": [{}] * world}
    start = resume_batch(state, new_batch, new_world)
    rest = [i for r in range(new_world)
            for i in ResumableSampler(96, new_batch, 7, rank=r, world_size=new_world).epoch_indices(2, start)]
    assert len(used) == done * batch * world and not set(range(96)) - used - set(rest)  # none skipped
    assert len(used & set(rest)) < new_batch * new_world  # up to one new global batch again
    if batch * world == new_batch * new_world:
        assert start == done


def test_a_resume_with_changed_settings_says_which(tmp_path, datasets, caplog):
    cut = tiny_pretrain(tmp_path / "cut", datasets, "train.halt_after_steps=3")
    assert pretrain(cut)["halted"]
    caplog.set_level("INFO")
    pretrain(tiny_pretrain(tmp_path / "cut", datasets, "train.resume=auto", "train.batch_size=8", "train.epochs=4"))
    assert ("resumed with settings changed since the checkpoint, which the rest of the run follows: train.epochs: 3 "
            "-> 4; train.batch_size: 16 -> 8 (its epoch goes on at batch 6, not 3") in caplog.text
    steps = [r["step"] for r in read_metrics(tmp_path / "cut" / "metrics.jsonl") if "loss" in r]
    assert steps == [1, 2, 3] + list(range(4, 4 + 2 + 3 * 8))  # the rest of epoch 0 at batch 8, then 3 epochs of 8


def test_one_loader_iterator_runs_through_all_epochs(tmp_path, datasets, monkeypatch):
    """The loop draws every epoch from one loader iterator (workers run on across epoch boundaries instead of
    refilling their queues at each epoch's start), also after a mid-epoch resume."""
    from torch.utils.data import DataLoader

    iterators = []
    original = DataLoader.__iter__
    monkeypatch.setattr(DataLoader, "__iter__", lambda self: iterators.append(self) or original(self))
    assert pretrain(tiny_pretrain(tmp_path / "r", datasets, "data.num_workers=2", "train.halt_after_steps=6"))["halted"]
    pretrain(tiny_pretrain(tmp_path / "r", datasets, "data.num_workers=2", "train.resume=auto"))
    assert len(iterators) == 2  # one for steps 1-6 (epochs 0-1), one for steps 7-12 (epochs 1-2)
    assert len([r for r in read_metrics(tmp_path / "r" / "metrics.jsonl") if "loss" in r]) == 12


def test_logged_lr_follows_schedule(tmp_path, datasets):
    cfg = tiny_pretrain(tmp_path / "r", datasets)
    pretrain(cfg)
    base = effective_lr(1.5e-3, None, 16, 1, 1)
    for r in read_metrics(tmp_path / "r" / "metrics.jsonl"):
        if "lr" in r:
            step = r["step"] - 1  # lr is set before the step runs
            assert r["lr"] == pytest.approx(lr_at(step / 4, base, 0.0, 1, 3), rel=1e-9)


def test_gradient_accumulation_equals_larger_batch(tmp_path, datasets):
    big = tiny_pretrain(tmp_path / "big", datasets, "train.batch_size=32", "train.epochs=1", "train.warmup_epochs=0")
    small = tiny_pretrain(tmp_path / "acc", datasets, "train.batch_size=16", "train.accum_steps=2", "train.epochs=1",
                          "train.warmup_epochs=0")
    pretrain(big)
    pretrain(small)
    a, b = weights(tmp_path / "big"), weights(tmp_path / "acc")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_nonfinite_loss_stops_with_step_and_keeps_last_good(tmp_path, datasets):
    cfg = tiny_pretrain(tmp_path / "nan", datasets, "train.lr=1e30", "train.warmup_epochs=0", "train.ckpt_every_steps=1")
    with pytest.raises(NonFiniteLossError, match=r"at step (\d+) \(epoch 0\)") as err:
        pretrain(cfg)
    bad = int(err.value.args[0].split("at step ")[1].split(" ")[0])
    saved = [int(p.name[11:20]) for p in CheckpointManager(tmp_path / "nan").list()]
    assert saved and max(saved) == bad - 1
    state = CheckpointManager.load(CheckpointManager(tmp_path / "nan").list()[0])
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_nonfinite_skip_policy_counts_skips(tmp_path, datasets):
    cfg = tiny_pretrain(tmp_path / "skip", datasets, "train.lr=1e30", "train.warmup_epochs=0", "train.nonfinite=skip",
                        "train.epochs=1")
    out = pretrain(cfg)
    assert out["skipped_steps"] >= 1


@pytest.mark.parametrize("extra", [["train.precision=bf16"], ["train.clip_grad=0.5"], ["train.compile=true"],
                                   ["train.compile=true", "train.compile_mode=reduce-overhead"]])
def test_loop_options_train_and_checkpoint(tmp_path, datasets, extra):
    out = pretrain(tiny_pretrain(tmp_path / "r", datasets, "train.epochs=2", *extra))
    records = [r for r in read_metrics(tmp_path / "r" / "metrics.jsonl") if "loss" in r]
    assert len(records) == 8 and all(math.isfinite(r["loss"]) for r in records)
    assert sum(r["loss"] for r in records[-2:]) < sum(r["loss"] for r in records[:2])
    assert out["step"] == 8 and (tmp_path / "r" / "checkpoint-000000008.pth").is_file()


def test_auto_precision_is_fp32_on_cpu_and_names_bf16_where_the_cpu_has_it(monkeypatch, caplog):
    import logging

    from openmae.engine import precision

    precision._bf16_hint.cache_clear()
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    with caplog.at_level(logging.INFO, logger="openmae.train"):
        assert precision.autocast_dtype("auto", torch.device("cpu")) is None
        assert precision.autocast_dtype("auto", torch.device("cpu")) is None
    assert sum("train.precision=bf16 would train faster" in r.message for r in caplog.records) == 1
    precision._bf16_hint.cache_clear()
    caplog.clear()
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    with caplog.at_level(logging.INFO, logger="openmae.train"):
        assert precision.autocast_dtype("auto", torch.device("cpu")) is None
    assert not caplog.records
    assert precision.autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16


@pytest.mark.parametrize("major", [7, 8])
def test_auto_precision_on_cuda_is_bf16_where_the_card_computes_in_it_else_fp16(monkeypatch, caplog, major):
    """torch's is_bf16_supported() says yes for a V100 or T4 too (emulated, without tensor cores): auto took bf16
    there, slower than fp16 and fp32's tensor-core rates; such a card trains in fp16 with the gradient scaler, as
    the official MAE code does, said once."""
    import logging

    from openmae.engine import precision

    def supported(including_emulation: bool = True) -> bool:  # torch's answer for a card of this generation
        return major >= 8 or including_emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    precision._fp16_note.cache_clear()
    cuda = torch.device("cuda", 0)
    with caplog.at_level(logging.INFO, logger="openmae.train"):
        chosen = [precision.autocast_dtype("auto", cuda) for _ in range(2)]
    assert chosen == [torch.bfloat16 if major >= 8 else torch.float16] * 2
    assert sum("fp16 with a gradient scaler" in r.message for r in caplog.records) == (major < 8)
    assert precision.autocast_dtype("bf16", cuda) is torch.bfloat16  # asked for: as asked


def test_pretraining_continues_from_init_weights(tmp_path, datasets):
    """pretrain.init: the model starts from the file's weights (openmae layout here; model.name=auto reads the
    architecture), so on the same batches and masks its loss stays below a fresh start's."""
    first = tiny_pretrain(tmp_path / "first", datasets)
    pretrain(first)
    init = tmp_path / "first" / "model-last.pth"
    cont = tiny_pretrain(tmp_path / "cont", datasets, "model.name=auto", f"pretrain.init={init}", "train.epochs=1")
    task = PretrainTask(cont)
    assert task.model.cfg.to_dict() == load_file(init)["model_config"]
    assert all(torch.equal(v, weights(tmp_path / "first")[k]) for k, v in task.model.state_dict().items())
    pretrain(cont)
    pretrain(tiny_pretrain(tmp_path / "fresh", datasets, "train.epochs=1"))  # the same batches and masks, no init
    losses = lambda d: [r["loss"] for r in read_metrics(d / "metrics.jsonl") if "loss" in r]
    cont_loss, fresh_loss, first = losses(tmp_path / "cont"), losses(tmp_path / "fresh"), losses(tmp_path / "first")
    assert fresh_loss == first[:4]
    assert all(c < f - 0.05 for c, f in zip(cont_loss, fresh_loss, strict=True))  # seen 0.09-0.10 lower


def test_resumed_pretraining_does_not_read_init_and_is_bit_exact(tmp_path, datasets, caplog):
    """A run started from pretrain.init resumes from its own checkpoint without the init file (moved here; its
    weights would be replaced anyway): model.name=auto takes the checkpoint's architecture, a changed model
    override is refused, and the result equals the uninterrupted run."""
    pretrain(tiny_pretrain(tmp_path / "first", datasets, "train.epochs=1"))
    init = tmp_path / "init.pth"
    (tmp_path / "first" / "model-last.pth").rename(init)
    cont = ("model.name=auto", f"pretrain.init={init}")
    pretrain(tiny_pretrain(tmp_path / "full", datasets, *cont))
    assert pretrain(tiny_pretrain(tmp_path / "cut", datasets, *cont, "train.halt_after_steps=6"))["halted"]
    init.rename(tmp_path / "moved.pth")
    with pytest.raises(FileNotFoundError, match="init.pth"):  # a new run still needs the file
        pretrain(tiny_pretrain(tmp_path / "new", datasets, *cont, "train.resume=auto"))
    with pytest.raises(CheckpointError, match="use the same model settings"):
        pretrain(tiny_pretrain(tmp_path / "cut", datasets, *cont, "train.resume=auto", "model.norm_pix_loss=true"))
    with caplog.at_level("INFO", logger="openmae.weights"):
        pretrain(tiny_pretrain(tmp_path / "cut", datasets, *cont, "train.resume=auto"))
    assert f"{init} not read: the run resumes from its own checkpoint" in caplog.text
    a, b = weights(tmp_path / "full"), weights(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = lambda d: [(r["step"], r["loss"]) for r in read_metrics(d / "metrics.jsonl") if "loss" in r]
    assert losses(tmp_path / "full") == losses(tmp_path / "cut")


def test_pretraining_from_an_encoder_only_file_keeps_the_decoder_initialised(tmp_path, datasets, caplog):
    """An encoder-only file (the official mae_pretrain_vit_* layout) fills the encoder; the decoder keeps its
    initialisation and the log names what was left; a file for another architecture fails naming the keys."""
    trained = openmae.create_model("mae_vit_debug_patch4_32")
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(1.0)
    torch.save({"model": trained.encoder_state_dict()}, tmp_path / "encoder.pth")
    cfg = tiny_pretrain(tmp_path / "run", datasets, f"pretrain.init={tmp_path / 'encoder.pth'}")
    torch.manual_seed(0)
    fresh = openmae.create_model("mae_vit_debug_patch4_32")
    with caplog.at_level("INFO", logger="openmae.pretrain"):
        torch.manual_seed(0)
        model = PretrainTask(cfg).model
    own, enc = model.state_dict(), trained.encoder_state_dict()
    assert all(torch.equal(own[k], v) for k, v in enc.items())
    decoder = [k for k in own if k not in enc]
    assert decoder and all(torch.equal(own[k], fresh.state_dict()[k]) for k in decoder)
    assert f"left at their initialisation: the decoder ({len(decoder)} tensors)" in caplog.text
    wide = openmae.create_model("mae_vit_debug_patch4_32", embed_dim=96, num_heads=3)
    torch.save({"model": wide.state_dict()}, tmp_path / "wide.pth")
    with pytest.raises(StateDictMismatch, match="wrong shape"):
        PretrainTask(tiny_pretrain(tmp_path / "run2", datasets, f"pretrain.init={tmp_path / 'wide.pth'}"))


def test_pretraining_auto_model_needs_init():
    with pytest.raises(ConfigError, match="model.name='auto'.*pretrain.init"):
        load_config(PretrainConfig, overrides=["model.name=auto", "data.name=cifar10"])


@pytest.mark.parametrize("terminal", [False, True, "notebook"])
def test_without_a_progress_bar_each_log_interval_is_a_log_line(tmp_path, datasets, monkeypatch, caplog, terminal):
    """A batch job's log (the console not a terminal) or train.progress=false: a line at every log interval with the
    step, loss, lr, images/s and time left, the numbers metrics.jsonl records; on a terminal, or in a Jupyter notebook
    (whose output is no terminal but draws the bar), the bar shows them."""
    import io
    import logging
    import re
    import sys

    class Console(io.StringIO):
        def isatty(self) -> bool:
            return terminal is True

    if terminal == "notebook":
        Console.__module__ = "ipykernel.iostream"  # ipykernel's OutStream: isatty() is False
    console = Console()
    monkeypatch.setattr(sys, "stderr", console)
    cfg = tiny_pretrain(tmp_path / "r", datasets, "train.epochs=2", "train.log_every_steps=2", "train.progress=true")
    with caplog.at_level(logging.INFO, logger="openmae.train"):
        pretrain(cfg)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    records = [r for r in read_metrics(tmp_path / "r" / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in records] == [2, 4, 6, 8]
    if terminal:
        assert lines == [] and "8/8" in console.getvalue()  # the bar
        return
    assert "8/8" not in console.getvalue()
    assert len(lines) == 4
    for line, record in zip(lines, records, strict=True):
        found = re.fullmatch(r"step (\d+)/8 \(epoch ([\d.]+)\): loss ([\d.]+), lr (\S+), (\d+) images/s, "
                             r"(\d+):(\d\d):(\d\d) left", line)
        assert found, line
        assert int(found[1]) == record["step"] and float(found[2]) == pytest.approx(record["epoch"], abs=0.005)
        assert float(found[3]) == pytest.approx(record["loss"], abs=1e-4)
        assert float(found[4]) == pytest.approx(record["lr"], rel=1e-2)
    assert lines[-1].endswith("0:00:00 left")
