"""Pretraining with part of the encoder frozen (pretrain.tune_blocks): which parameters train, their gradients,
activation checkpointing of the first trained block, a run that keeps the frozen weights and resumes exactly,
refusals."""

import pytest
import torch
from helpers import assert_trained_grads_match, tiny_pretrain, weights

import openmae
from openmae.config import ConfigError, load_config
from openmae.engine.checkpoint import CheckpointError, CheckpointManager
from openmae.engine.optim import param_groups
from openmae.engine.pretrain import PretrainConfig, PretrainTask, pretrain
from openmae.engine.step_profile import kept_for_backward
from openmae.models.freezing import tune_encoder_blocks
from openmae.models.mae import DECODER_PREFIXES

DECODER = (*DECODER_PREFIXES,)


def debug_mae(depth: int = 4, **overrides) -> openmae.MaskedAutoencoder:
    torch.manual_seed(0)
    return openmae.MaskedAutoencoder(openmae.model_config("mae_vit_debug_patch4_32", depth=depth, **overrides))


@pytest.mark.parametrize(("blocks", "trained_prefixes"), [(0, DECODER), (1, ("blocks.3.", "norm.", *DECODER))])
def test_the_trained_part_gets_the_gradients_of_the_whole_model_and_nothing_flows_through_the_frozen_one(
        blocks, trained_prefixes):
    """With the encoder frozen (0) or its last block tuned (1), the decoder's gradients (and the tuned block's and
    norm's) are those of the same loss with everything training; the frozen parameters get none, the blocks before
    the first trained one build no graph, the fixed position tables stay fixed, and the optimizer's groups hold the
    trained parameters alone."""
    models = [debug_mae(), debug_mae()]
    images, noise = torch.randn(6, 3, 32, 32), torch.rand(6, 64)
    trained, total = tune_encoder_blocks(models[1], blocks)
    names = {n for n, p in models[1].named_parameters() if p.requires_grad}
    assert names == {n for n, _ in models[1].named_parameters() if n.startswith(trained_prefixes)} - {
        "decoder_pos_embed"}
    assert not models[1].pos_embed.requires_grad and not models[1].decoder_pos_embed.requires_grad
    assert trained == sum(p.numel() for n, p in models[1].named_parameters() if n in names)
    assert total == sum(p.numel() for p in models[0].parameters())
    needs_grad = []
    models[1].blocks[2].register_forward_hook(lambda m, i, o: needs_grad.append(o.requires_grad))
    for model in models:
        model.train()(images, 0.75, noise).loss.backward()
    assert needs_grad == [False]
    assert_trained_grads_match(models[1], models[0])
    assert {n for g in param_groups(models[1], 0.05) for n in g["names"]} == names


def test_a_tuned_block_after_frozen_ones_is_recomputed_with_activation_checkpointing():
    """model.grad_checkpointing recomputes a block in the backward when it is in the graph: the first trained block,
    whose input needs no gradient, too (it was left out, keeping all its activations); the frozen blocks are not
    (they keep nothing). Same gradients as the plain step, fewer activations kept."""
    plain, recomputed = debug_mae(), debug_mae(grad_checkpointing=True)
    for model in (plain, recomputed):
        tune_encoder_blocks(model, 1)
    calls = {i: 0 for i in range(4)}
    for i, block in enumerate(recomputed.blocks):  # counted in the MLP's forward (the recomputation runs no hooks)
        forward = block.mlp.forward
        block.mlp.forward = lambda x, i=i, forward=forward: (calls.__setitem__(i, calls[i] + 1), forward(x))[1]
    images, noise = torch.randn(6, 3, 32, 32), torch.rand(6, 64)
    (plain_loss, plain_bytes), (loss, kept_bytes) = (
        kept_for_backward(m, lambda m=m: m.train()(images, 0.75, noise).loss) for m in (plain, recomputed))
    assert loss.item() == pytest.approx(plain_loss.item(), rel=1e-6)
    assert kept_bytes < 0.75 * plain_bytes
    plain_loss.backward()
    loss.backward()
    assert calls == {0: 1, 1: 1, 2: 1, 3: 2}  # block 3 run again in the backward
    grads = dict(plain.named_parameters())
    for name, param in recomputed.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(param.grad, grads[name].grad, rtol=1e-5, atol=1e-7, msg=name)


def test_a_frozen_encoder_run_keeps_its_weights_trains_a_decoder_resumes_exactly_and_refuses_another_setting(
        tmp_path, datasets, caplog):
    """A decoder for an encoder-only file (the official mae_pretrain_vit_* layout): the run's encoder is the file's
    bit for bit, its decoder trained, its optimizer holds the decoder's state alone, an interrupted run resumes to
    the same weights, and resuming with another pretrain.tune_blocks is refused."""
    mae = debug_mae(depth=2)
    init = tmp_path / "encoder.pth"
    torch.save({"model": mae.encoder_state_dict(), "model_config": mae.cfg.to_dict()}, init)
    frozen = ("model.name=auto", f"pretrain.init={init}", "pretrain.tune_blocks=0", "train.epochs=2")
    with caplog.at_level("INFO", logger="openmae.pretrain"):
        pretrain(tiny_pretrain(tmp_path / "full", datasets, *frozen))
    trained = sum(v.numel() for k, v in mae.state_dict().items() if k.startswith(DECODER) and k != "decoder_pos_embed")
    total = sum(p.numel() for p in mae.parameters())
    assert f"the encoder is frozen: the decoder alone trains ({trained:,} of {total:,} parameters)" in caplog.text
    last = weights(tmp_path / "full")
    encoder = mae.encoder_state_dict()
    assert all(torch.equal(last[k], v) for k, v in encoder.items())
    optimizer = CheckpointManager.load(CheckpointManager(tmp_path / "full").list()[-1])["optimizer"]["state"]
    assert sorted(optimizer) == sorted(k for k in last if k.startswith(DECODER) and k != "decoder_pos_embed")

    assert pretrain(tiny_pretrain(tmp_path / "cut", datasets, *frozen, "train.halt_after_steps=5"))["halted"]
    halted = CheckpointManager.load(CheckpointManager(tmp_path / "cut").list()[-1])["model"]
    assert all(torch.equal(halted[k], v) for k, v in encoder.items())  # the decoder learns from step 5 to 8
    assert all(not torch.equal(last[k], halted[k]) for k in last if k.startswith(("decoder_blocks.", "decoder_pred.")))
    with pytest.raises(CheckpointError, match=r"written by a run with pretrain.tune_blocks=0, but this run has 1: .* "
                                              r"resume with pretrain.tune_blocks=0, or start a new run .* with "
                                              r"pretrain.init="):
        pretrain(tiny_pretrain(tmp_path / "cut", datasets, *frozen[:2], "pretrain.tune_blocks=1", "train.epochs=2",
                               "train.resume=auto"))
    pretrain(tiny_pretrain(tmp_path / "cut", datasets, *frozen, "train.resume=auto"))
    again = weights(tmp_path / "cut")
    assert all(torch.equal(last[k], again[k]) for k in last)


def test_tune_blocks_out_of_range_is_refused(tmp_path, datasets):
    with pytest.raises(ConfigError, match=r"pretrain.tune_blocks.*-1.*>= 0"):
        load_config(PretrainConfig, overrides=["data.name=cifar10", "pretrain.tune_blocks=-1"])
    cfg = tiny_pretrain(tmp_path, datasets, "model.depth=2", "pretrain.tune_blocks=3")
    with pytest.raises(ValueError, match=r"pretrain.tune_blocks=3, but the encoder has 2 blocks: give 0 to 2"):
        PretrainTask(cfg)
    everything = debug_mae()
    assert tune_encoder_blocks(everything, 4) == tune_encoder_blocks(everything, None)
    assert all(p.requires_grad for n, p in everything.named_parameters() if "pos_embed" not in n)


@pytest.mark.parametrize("tune_blocks", [0, None])
def test_pretraining_starts_from_a_classifier_fine_tuned_with_average_pooling(tmp_path, datasets, caplog, tune_blocks):
    """A classifier fine-tuned with average pooling (the paper's fine-tuning: fc_norm of the mean patch token, no
    final norm) as pretrain.init (a decoder behind a fine-tuned encoder; continued pretraining): its encoder is read
    bit for bit, its fc_norm and head are not, the final norm starts at its initialisation (said in the log) and
    stays there with the encoder frozen, trains with it whole. It was refused ("no final norm")."""
    from openmae.models.vit import create_classifier

    cfg = debug_mae(depth=2).cfg
    torch.manual_seed(1)
    classifier = create_classifier(cfg, 10, "avg")
    with torch.no_grad():
        for p in classifier.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # away from any initialisation
    sd = classifier.state_dict()
    assert "norm.weight" not in sd and "fc_norm.weight" in sd
    init = tmp_path / "model-best.pth"
    torch.save({"model": sd, "model_config": cfg.to_dict()}, init)
    run = tmp_path / "run"
    extra = () if tune_blocks is None else (f"pretrain.tune_blocks={tune_blocks}",)
    with caplog.at_level("INFO", logger="openmae.pretrain"):
        pretrain(tiny_pretrain(run, datasets, "model.name=auto", f"pretrain.init={init}", "train.epochs=1", *extra))
    assert (f"{init} is a classifier fine-tuned with average pooling: it has no final norm of every token" in caplog.text)
    assert ("a plain standardisation of each token, frozen" if tune_blocks == 0 else "trained with the rest") in caplog.text
    last = weights(run)
    assert not any(k.startswith(("fc_norm.", "head.")) for k in last)
    encoder = {k: v for k, v in sd.items() if not k.startswith(("fc_norm.", "head."))}
    frozen = encoder if tune_blocks == 0 else {k: encoder[k] for k in ("pos_embed",)}
    assert all(torch.equal(last[k], v) for k, v in frozen.items())
    if tune_blocks == 0:
        assert torch.equal(last["norm.weight"], torch.ones(cfg.embed_dim))
        assert torch.equal(last["norm.bias"], torch.zeros(cfg.embed_dim))
    else:
        assert not torch.equal(last["norm.weight"], torch.ones(cfg.embed_dim))
        assert not torch.equal(last["blocks.1.mlp.fc2.weight"], encoder["blocks.1.mlp.fc2.weight"])
