"""Partial fine-tuning (finetune.tune_blocks, the paper's section 4.3): which parameters train, their gradients,
exact resume, refusals."""

import pytest
import torch
from helpers import assert_trained_grads_match
from test_finetune import tiny_finetune

import openmae
from openmae.config import ConfigError, load_config
from openmae.convert.files import load_file
from openmae.engine.checkpoint import CheckpointError, CheckpointManager
from openmae.engine.finetune import FinetuneConfig, FinetuneTask, finetune
from openmae.engine.optim import param_groups
from openmae.engine.step_profile import kept_for_backward
from openmae.models.vit import create_classifier, load_encoder, tune_last_blocks


def debug_encoder(depth: int = 4) -> openmae.MaskedAutoencoder:
    torch.manual_seed(0)
    return openmae.MaskedAutoencoder(openmae.model_config("mae_vit_debug_patch4_32", depth=depth))


def test_the_last_blocks_get_the_gradients_of_the_whole_model_and_nothing_flows_through_the_frozen_ones():
    """With blocks 2 and 3 of 4 tuned, their gradients (and the norm's and head's) are those of the same loss
    fine-tuning everything; the embeddings and blocks 0-1 get none, compute no graph (their outputs need no
    gradient) and lose their drop path; the optimizer's groups hold the trained parameters alone, each at the
    lr scale it has when everything trains."""
    mae = debug_encoder()
    images, labels = torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 3, 4, 5])
    models = [create_classifier(mae.cfg, 10, "avg", drop_path=0.0) for _ in range(2)]
    load_encoder(models[0], mae.state_dict())
    torch.nn.init.normal_(models[0].head.weight, std=0.1)  # a head whose gradients reach the blocks
    models[1].load_state_dict(models[0].state_dict())
    trained, total = tune_last_blocks(models[1], 2)
    names = {n for n, p in models[1].named_parameters() if p.requires_grad}
    assert names == {n for n, _ in models[1].named_parameters() if n.startswith(("blocks.2.", "blocks.3.",
                                                                                   "fc_norm.", "head."))}
    assert trained == sum(p.numel() for n, p in models[1].named_parameters() if n in names) and trained < total
    grads_through = []
    models[1].blocks[1].register_forward_hook(lambda m, i, o: grads_through.append(o.requires_grad))
    for model in models:
        torch.nn.functional.cross_entropy(model.train()(images), labels).backward()
    assert grads_through == [False]
    assert_trained_grads_match(models[1], models[0])
    groups = param_groups(models[1], 0.05, 0.75, 4)
    assert {n for g in groups for n in g["names"]} == names
    scales = {n: g["lr_scale"] for g in param_groups(models[0], 0.05, 0.75, 4) for n in g["names"]}
    assert all(scales[n] == g["lr_scale"] for g in groups for n in g["names"])
    # stochastic depth only where the weights learn
    dropped = create_classifier(mae.cfg, 10, "avg", drop_path=0.2)
    tune_last_blocks(dropped, 2)
    kinds = [(type(b.drop_path1).__name__, type(b.drop_path2).__name__) for b in dropped.blocks]
    assert kinds == [("Identity", "Identity")] * 2 + [("DropPath", "DropPath")] * 2


def test_a_partial_run_keeps_the_frozen_weights_resumes_exactly_and_refuses_another_tune_blocks(tmp_path, datasets,
                                                                                                caplog):
    mae = debug_encoder(depth=2)
    init = tmp_path / "init.pth"
    torch.save({"model": mae.state_dict(), "model_config": mae.cfg.to_dict()}, init)
    partial = ("model.name=auto", f"finetune.init={init}", "finetune.tune_blocks=1")
    with caplog.at_level("INFO", logger="openmae.finetune"):
        full = finetune(tiny_finetune(tmp_path / "full", datasets, *partial))
    assert "partial fine-tuning: the last 1 of 2 blocks, the final norm and the head train" in caplog.text
    weights = load_file(tmp_path / "full" / "model-timm.safetensors")["model"]
    pretrained = mae.state_dict()
    frozen = [k for k in weights if k.startswith(("patch_embed.", "blocks.0.")) or k in ("cls_token", "pos_embed")]
    assert len(frozen) == 2 + 12 + 2  # patch embedding, block 0's twelve tensors, cls token, position table
    assert all(torch.equal(weights[k], pretrained[k]) for k in frozen)
    assert all(not torch.equal(weights[k], pretrained[k]) for k in weights if k.startswith("blocks.1."))
    trained = sum(v.numel() for k, v in weights.items() if k.startswith(("blocks.1.", "fc_norm.", "head.")))
    assert f"({trained:,} of {sum(v.numel() for v in weights.values()):,} parameters)" in caplog.text
    (last,) = CheckpointManager(tmp_path / "full").list()[-1:]
    optimizer = CheckpointManager.load(last)["optimizer"]["state"]
    assert sorted(optimizer) == sorted(k for k in weights if k.startswith(("blocks.1.", "fc_norm.", "head.")))

    assert finetune(tiny_finetune(tmp_path / "cut", datasets, *partial, "train.halt_after_steps=3"))["halted"]
    with pytest.raises(CheckpointError, match=r"written by a run with finetune.tune_blocks=1, but this run has "
                                              r"None: .* resume with finetune.tune_blocks=1, or start a new run"):
        finetune(tiny_finetune(tmp_path / "cut", datasets, *partial[:2], "train.resume=auto"))
    resumed = finetune(tiny_finetune(tmp_path / "cut", datasets, *partial, "train.resume=auto"))
    again = load_file(tmp_path / "cut" / "model-timm.safetensors")["model"]
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    assert (full["top1"], full["eval_loss"]) == (resumed["top1"], resumed["eval_loss"])


def test_tune_blocks_out_of_range_is_refused(tmp_path, datasets):
    with pytest.raises(ConfigError, match=r"finetune.tune_blocks.*-1.*>= 0"):
        load_config(FinetuneConfig, overrides=["data.name=cifar10", "finetune.tune_blocks=-1"])
    cfg = tiny_finetune(tmp_path, datasets, "finetune.tune_blocks=3")
    with pytest.raises(ValueError, match=r"finetune.tune_blocks=3, but the encoder has 2 blocks: give 0 to 2"):
        FinetuneTask(cfg, torch.device("cpu"))
    # 0: the head and its norm alone; the encoder's depth: everything
    head_only = create_classifier(debug_encoder().cfg, 10)
    assert tune_last_blocks(head_only, 0)[0] == sum(p.numel() for n, p in head_only.named_parameters()
                                                    if n.startswith(("fc_norm.", "head.")))
    everything = create_classifier(debug_encoder().cfg, 10)
    assert tune_last_blocks(everything, 4)[0] == tune_last_blocks(everything, None)[1]
    assert all(p.requires_grad for p in everything.parameters())


@pytest.mark.parametrize("tune", ["null", "1"])
def test_activation_checkpointing_reaches_fine_tuning_with_the_same_gradients_and_fewer_activations(tmp_path, datasets,
                                                                                                   tune):
    """model.grad_checkpointing=true made no difference to `openmae finetune` (only pretraining read it): now its
    classifier recomputes each block in the backward (timm's non-reentrant checkpointing, so that the first trained
    block after frozen ones, whose input needs no gradient, still gets its gradients), keeping fewer activations,
    with the gradients of the plain step."""
    tasks = [FinetuneTask(tiny_finetune(tmp_path, datasets, f"finetune.tune_blocks={tune}", "finetune.drop_path=0",
                                        f"model.grad_checkpointing={on}"), torch.device("cpu"))
             for on in ("false", "true")]
    assert [t.model.grad_checkpointing for t in tasks] == [False, True]
    tasks[1].model.load_state_dict(tasks[0].model.state_dict())
    images = torch.randn(8, 3, 32, 32)
    (plain, plain_bytes), (recomputed, recomputed_bytes) = (
        kept_for_backward(t.model, lambda t=t: t.model.train()(images).logsumexp(1).mean()) for t in tasks)
    assert recomputed.item() == pytest.approx(plain.item(), rel=1e-6)
    assert recomputed_bytes < 0.75 * plain_bytes
    plain.backward()
    recomputed.backward()
    grads = dict(tasks[0].model.named_parameters())
    trained = [(n, p) for n, p in tasks[1].model.named_parameters() if p.requires_grad]
    assert trained and any(n.startswith("blocks.1.") for n, _ in trained)
    for name, param in trained:
        assert param.grad is not None, name
        torch.testing.assert_close(param.grad, grads[name].grad, rtol=1e-5, atol=1e-7, msg=lambda m, n=name: f"{n}: {m}")


def test_reentrant_checkpointing_with_frozen_blocks_is_refused(tmp_path, datasets, monkeypatch):
    """timm's reentrant checkpointing (TIMM_REENTRANT_CKPT) would leave the first trained block without gradients
    (its input needs none): refused, saying what to change."""
    monkeypatch.setattr("openmae.engine.finetune.use_reentrant_ckpt", lambda: True)
    cfg = tiny_finetune(tmp_path, datasets, "finetune.tune_blocks=1", "model.grad_checkpointing=true")
    with pytest.raises(ValueError, match=r"TIMM_REENTRANT_CKPT is set\): the first trained block would get no"):
        FinetuneTask(cfg, torch.device("cpu"))
    FinetuneTask(tiny_finetune(tmp_path, datasets, "model.grad_checkpointing=true"), torch.device("cpu"))  # all train
