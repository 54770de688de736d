"""Loading official / timm / Hugging Face weights safely, and conversions that round-trip exactly."""

import json
import os
from pathlib import Path

import pytest
import torch
from transformers import ViTMAEConfig, ViTMAEForPreTraining

import openmae
from openmae.convert.checkpoints import StateDictMismatch, load_pretrained, load_state_dict_into
from openmae.convert.files import UnreadableCheckpointError, UnsafeCheckpointError, load_file, save_file
from openmae.convert.hf import hf_config_dict, installed_layout, openmae_to_hf
from openmae.convert.timm import create_timm_encoder, openmae_to_timm


def official_full(tmp_path: Path, name="mae_vit_debug_patch4_32", **kw) -> tuple[Path, openmae.MaskedAutoencoder]:
    model = openmae.create_model(name, **kw)
    path = tmp_path / "mae_visualize_debug.pth"
    torch.save({"model": model.state_dict()}, path)  # the official {'model': ...} layout
    return path, model


def test_official_full_checkpoint_loads_strictly(tmp_path):
    path, ref = official_full(tmp_path)
    loaded = load_pretrained(path, "mae_vit_debug_patch4_32")
    for k, v in ref.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


def test_weights_under_a_training_wrappers_prefix_load(tmp_path, caplog):
    """A state dict saved from DDP (``module.``), a compiled model (``_orig_mod.``), a LightningModule (``model.``,
    beside a loss's tensors) or a larger model (``encoder.``), in our names or Hugging Face's: the same weights, the
    architecture inferred as from a plain file, what lay outside the prefix logged."""
    caplog.set_level("INFO")
    ref = openmae.create_model("mae_vit_debug_patch4_32")
    sd = ref.state_dict()
    hf = openmae_to_hf(sd)
    files = {
        "ddp.pth": {"model": {f"module.{k}": v for k, v in sd.items()}},
        "compiled.pth": {"state_dict": {f"module._orig_mod.{k}": v for k, v in sd.items()}},
        "lightning.pth": {"state_dict": {**{f"model.{k}": v for k, v in sd.items()}, "loss.scale": torch.ones(1)},
                          "epoch": 3},
        "part.pth": {f"encoder.{k}": v for k, v in sd.items()},
        "hf_ddp.pth": {f"module.{k}": v for k, v in hf.items()},
    }
    for name, obj in files.items():
        torch.save(obj, tmp_path / name)
        loaded = load_pretrained(tmp_path / name)  # architecture inferred from the shapes
        assert loaded.cfg.embed_dim == ref.cfg.embed_dim and loaded.cfg.depth == ref.cfg.depth, name
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in sd.items()), name
    assert "weights read from under the prefix 'model.' (50 tensors); 1 outside it left out: loss.scale" in caplog.text
    two = {**{f"teacher.{k}": v for k, v in sd.items()}, **{f"student.{k}": v for k, v in sd.items()}}
    torch.save(two, tmp_path / "two.pth")  # two models: not guessed
    with pytest.raises(ValueError):
        load_pretrained(tmp_path / "two.pth", "mae_vit_debug_patch4_32")


def test_official_encoder_only_checkpoint(tmp_path):
    ref = openmae.create_model("mae_vit_debug_patch4_32")
    path = tmp_path / "mae_pretrain_debug.pth"
    torch.save({"model": ref.encoder_state_dict()}, path)
    model = openmae.create_model("mae_vit_debug_patch4_32")
    left = load_state_dict_into(model, load_file(path)["model"])
    assert left and all(k.startswith(("decoder_", "mask_token")) for k in left)
    assert torch.equal(model.blocks[1].mlp.fc2.weight, ref.blocks[1].mlp.fc2.weight)
    # infers the architecture when no name is given
    assert load_pretrained(path).cfg.embed_dim == 64


def test_encoder_only_missing_encoder_key_is_listed(tmp_path):
    sd = openmae.create_model("mae_vit_debug_patch4_32").encoder_state_dict()
    del sd["blocks.1.attn.qkv.weight"]
    sd["blocks.1.extra.weight"] = torch.zeros(1)
    with pytest.raises(StateDictMismatch) as err:
        load_state_dict_into(openmae.create_model("mae_vit_debug_patch4_32"), sd)
    assert "missing (1): blocks.1.attn.qkv.weight" in str(err.value)
    assert "unexpected (1): blocks.1.extra.weight" in str(err.value)


def test_other_model_size_says_which():
    sd = openmae.create_model("mae_vit_debug_patch4_32", embed_dim=96, depth=3, num_heads=3).state_dict()
    with pytest.raises(StateDictMismatch, match=r"looks like width 96, depth 3, patch 4") as err:
        load_state_dict_into(openmae.create_model("mae_vit_debug_patch4_32"), sd)
    assert "wrong shape" in str(err.value)
    assert "blocks.0.attn.qkv.weight: file (288, 96) vs model (192, 64)" in str(err.value)


def test_pickle_payload_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "args": Payload()}, path)
    with pytest.raises(UnsafeCheckpointError, match="refused to load .* GLOBAL (posix|os).system"):
        load_file(path)
    with pytest.raises(UnsafeCheckpointError):
        load_pretrained(path)
    assert not marker.exists()


def test_the_official_codes_checkpoints_load_with_the_architecture_their_args_name(tmp_path):
    """The official MAE code saves its argparse.Namespace (args) with every checkpoint: such files were refused as
    unsafe. They load (the Namespace read as a dict, nothing else allowed), and --model names the architecture where
    the shapes alone guess head counts (the debug preset's two 64-wide heads read as one): pretraining checkpoints
    (mae_vit_*), fine-tuning ones (vit_*: that encoder); a file whose shapes differ from its --model's preset (changed
    code) falls back to the shapes."""
    import argparse

    from helpers import call_cli

    model = openmae.create_model("mae_vit_debug_patch4_32", norm_pix_loss=False)
    args = argparse.Namespace(model="mae_vit_debug_patch4_32", input_size=32, mask_ratio=0.75, norm_pix_loss=False,
                              blr=1.5e-4, data_path="/datasets01/imagenet_full_size/061417/", output_dir="./output_dir",
                              resume="", dist_url="env://")
    full = tmp_path / "checkpoint-799.pth"
    torch.save({"model": model.state_dict(), "optimizer": torch.optim.AdamW(model.parameters()).state_dict(),
                "epoch": 799, "scaler": {"scale": 65536.0, "_growth_tracker": 0}, "args": args}, full)
    obj = load_file(full)
    assert obj["args"]["model"] == "mae_vit_debug_patch4_32" and obj["epoch"] == 799
    loaded = load_pretrained(full)
    assert loaded.cfg == model.cfg and loaded.cfg.num_heads == 2  # from the shapes: 1 (64 wide: one 64-wide head)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    proc = call_cli("info", str(full))
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr
    assert "a checkpoint of the official MAE code after epoch 799" in out
    assert "mae_vit_debug_patch4_32: width 64, depth 2, 2 heads" in out and "(--model mae_vit_debug_patch4_32)" in out
    assert "normalisation: mean [0.485, 0.456, 0.406] std [0.229, 0.224, 0.225]" in out  # the official code's, always

    base = openmae.create_model("mae_vit_base_patch16")  # a fine-tuning's: --model vit_base_patch16, the encoder
    tuned = tmp_path / "finetuned.pth"
    torch.save({"model": base.encoder_state_dict(), "args": argparse.Namespace(
        model="vit_base_patch16", input_size=224, blr=5e-4, data_path="/imagenet", nb_classes=1000)}, tuned)
    assert load_pretrained(tuned).cfg.num_heads == 12

    timm_args = tmp_path / "timm-train.pth"  # timm's train.py saves args of its own: not the official code's
    torch.save({"state_dict": model.state_dict(), "args": argparse.Namespace(model="mae_vit_debug_patch4_32",
                                                                             data_dir="/imagenet", lr=None)}, timm_args)
    assert load_pretrained(timm_args).cfg.num_heads == 1  # the shapes' guess
    assert "normalisation: not recorded" in call_cli("info", str(timm_args)).stdout

    changed = tmp_path / "changed.pth"  # three blocks where the preset has two: the shapes win
    torch.save({"model": openmae.create_model("mae_vit_debug_patch4_32", depth=3).state_dict(), "args": args}, changed)
    assert load_pretrained(changed).cfg.depth == 3

    class Payload:  # a Namespace is read as plain data: what it holds is still checked
        def __reduce__(self):
            return (os.system, ("true",))

    evil = tmp_path / "evil.pth"
    torch.save({"model": model.state_dict(), "args": argparse.Namespace(model=Payload())}, evil)
    with pytest.raises(UnsafeCheckpointError, match="GLOBAL (posix|os).system"):
        load_file(evil)


def test_weights_without_an_architecture_take_the_heads_a_run_sets(tmp_path, caplog):
    """A weights-only file (the released official encoders, a bare state dict) names no head count: kNN, probes and
    fine-tuning guess the paper's for its width, warned where it is not a paper size, and take model.num_heads."""
    import logging

    from openmae.engine.config import ModelSection
    from openmae.engine.weights import resolve_encoder

    bare = tmp_path / "encoder.pth"  # the debug preset's two 64-wide heads
    torch.save({"model": openmae.create_model("mae_vit_debug_patch4_32").encoder_state_dict()}, bare)
    with caplog.at_level(logging.INFO, logger="openmae.convert.checkpoints"):
        guessed, _, _ = resolve_encoder(ModelSection(name="auto"), str(bare))
    assert guessed.num_heads == 1 and [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "records no architecture: read from its tensors' shapes as width 64, depth 2, patch 4, with 1 head " \
           "(the paper's for this width; the shapes cannot tell)" in caplog.text
    assert "set model.num_heads=<its heads> if it had others" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="openmae.convert.checkpoints"):
        told, sd, _ = resolve_encoder(ModelSection(name="auto", num_heads=2), str(bare))
    assert told.num_heads == 2 and told.embed_dim == 64 and not caplog.records
    with caplog.at_level(logging.INFO, logger="openmae.convert.checkpoints"):  # a preset named: nothing guessed
        assert resolve_encoder(ModelSection(name="mae_vit_debug_patch4_32"), str(bare))[0].num_heads == 2
    assert not caplog.records
    openmae.create_model("mae_vit_debug_patch4_32").load_state_dict(sd, strict=False)  # the weights it names

    tiny = tmp_path / "vit-tiny.pth"  # a paper size (ViT-Ti: 192 wide, 12 deep, 3 heads): said, not warned
    torch.save({"model": openmae.create_model("mae_vit_base_patch16", embed_dim=192, num_heads=3, img_size=32,
                                              decoder_depth=1).encoder_state_dict()}, tiny)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="openmae.convert.checkpoints"):
        assert resolve_encoder(ModelSection(name="auto"), str(tiny))[0].num_heads == 3
    assert [r.levelno for r in caplog.records] == [logging.INFO] and "3 heads" in caplog.text


def test_files_cut_short_damaged_or_of_another_kind_say_so(tmp_path):
    """A weights file that an interrupted download cut short, an empty file, text, random bytes, a pickle that is no
    PyTorch file, a damaged .safetensors: each a clear error naming the file, its size and what to do (the CLI prints
    it without a traceback), where torch raised KeyError, IndexError, EOFError or OSError."""
    from helpers import call_cli

    path, _ = official_full(tmp_path)
    whole = path.read_bytes()
    made = {"cut.pth": whole[: len(whole) // 2], "empty.pth": b"", "text.pth": b"hi\n",
            "random.pth": bytes(range(256)) * 20, "pickle.pth": b"\x80\x02K\x01.",
            "damaged.safetensors": b"garbage"}
    for name, data in made.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(UnreadableCheckpointError, match=rf"could not read .*{name} \({len(data):,} bytes\) as a "
                                                           "weights file .*download or copy it again"):
            load_file(tmp_path / name)
    proc = call_cli("info", str(tmp_path / "cut.pth"))
    assert proc.returncode == 1 and proc.stderr.startswith("openmae info: error: could not read") and "Traceback" not in proc.stderr


def test_pos_embed_interpolated_for_other_resolution(tmp_path):
    path, ref = official_full(tmp_path)  # 32px, grid 8x8
    model = load_pretrained(path, "mae_vit_debug_patch4_32", img_size=48)  # grid 12x12
    assert model.pos_embed.shape == (1, 145, 64)
    assert torch.equal(model.blocks[0].attn.qkv.weight, ref.blocks[0].attn.qkv.weight)


def test_atomic_save_keeps_previous_file_on_failure(tmp_path):
    path = tmp_path / "w.pth"
    save_file({"a": torch.ones(2)}, path)

    class Boom:
        def __reduce__(self):
            raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left"):
        save_file({"a": Boom()}, path)
    assert torch.equal(load_file(path)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["w.pth"]  # no temporary file left behind


def test_saved_files_have_the_permissions_of_a_plain_write(tmp_path):
    """A checkpoint or weights file is readable as any file the user writes (the umask's), not private as the
    temporary file it is written through: colleagues on a shared cluster read a run's model-best.pth."""
    import os

    old = os.umask(0o027)
    try:
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
        for name in ("w.pth", "w.safetensors"):
            path = save_file({"a": torch.ones(2)}, tmp_path / name)
            assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o640, name
    finally:
        os.umask(old)


def test_safetensors_roundtrip(tmp_path):
    model = openmae.create_model("mae_vit_debug_patch4_32")
    path = save_file(model.state_dict(), tmp_path / "w.safetensors")
    loaded = load_pretrained(path, "mae_vit_debug_patch4_32")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


def test_official_to_openmae_to_timm_to_hf_and_back_identical(tmp_path):
    path, ref = official_full(tmp_path)
    model = load_pretrained(path)
    # timm: the encoder, identical tensors and identical features
    timm_vit = create_timm_encoder(model.cfg).eval()
    timm_vit.load_state_dict(openmae_to_timm(model.state_dict()))
    # Hugging Face: the whole MAE, identical outputs for the same noise
    hf = ViTMAEForPreTraining(ViTMAEConfig(**hf_config_dict(model.cfg))).eval()
    hf.load_state_dict(openmae_to_hf(model.state_dict(), layout=installed_layout()), strict=True)
    back = load_pretrained(hf.state_dict(), "mae_vit_debug_patch4_32")
    back_timm = load_pretrained({**timm_vit.state_dict(), **{k: v for k, v in ref.state_dict().items()
                                                              if k.startswith(("decoder_", "mask_token"))}})
    for k, v in ref.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
        assert torch.equal(back_timm.state_dict()[k], v), k
    imgs = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, 64)
    model.eval()
    with torch.no_grad():
        out, hf_out = model(imgs, noise=noise), hf(pixel_values=imgs, noise=noise)
        torch.testing.assert_close(out.pred, hf_out.logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.forward_features(imgs), timm_vit.forward_features(imgs), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bands", [1, 6])
def test_rgb_weights_adapted_to_other_bands(bands, caplog):
    """An RGB checkpoint for a model of 1 or 6 input channels: the patch embedding through timm's adapt_input_conv,
    so that a gray image (1 band) or RGB twice over (6 bands) gives exactly the RGB model's features on RGB; the
    decoder's per-band pixel head is left at its initialisation; the classifier's encoder is adapted the same way."""
    from openmae.models.vit import create_classifier, load_encoder

    rgb = openmae.create_model("mae_vit_debug_patch4_32").eval()
    other = openmae.create_model("mae_vit_debug_patch4_32", in_chans=bands).eval()
    init = other.state_dict()["decoder_pred.weight"].clone()
    sd = rgb.state_dict()
    left = load_state_dict_into(other, sd)
    assert left == ["decoder_pred.bias", "decoder_pred.weight"] and torch.equal(other.decoder_pred.weight, init)
    assert sd["patch_embed.proj.weight"].shape[1] == 3  # the caller's weights untouched
    assert f"adapted from 3 to {bands} input channels" in caplog.text
    x = torch.rand(2, 1, 32, 32).expand(-1, 3, -1, -1) if bands == 1 else torch.rand(2, 3, 32, 32)
    x_other = x[:, :1] if bands == 1 else x.repeat(1, 2, 1, 1)
    with torch.no_grad():
        assert torch.allclose(other.forward_features(x_other), rgb.forward_features(x), atol=1e-5)
        classifier = create_classifier(other.cfg, num_classes=4, global_pool="token").eval()
        load_encoder(classifier, sd)
        assert torch.allclose(classifier.forward_features(x_other), rgb.forward_features(x), atol=1e-5)


def _outputs(model: openmae.MaskedAutoencoder) -> torch.Tensor:
    torch.manual_seed(0)
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 64)
    with torch.no_grad():
        return model(imgs, 0.75, noise).pred


def test_hugging_face_folders_load_with_their_architecture_and_normalisation(tmp_path):
    """A folder `convert --to hf` or transformers' save_pretrained writes (one file or shards, safetensors or .bin)
    reads as a checkpoint anywhere: the architecture from config.json (2 heads here, which shapes alone would read as
    1; norm_pix_loss), the normalisation from preprocessor_config.json."""
    from openmae.convert.checkpoints import infer_config
    from openmae.convert.export import convert_file

    model = openmae.create_model("mae_vit_debug_patch4_32", norm_pix_loss=True)
    assert infer_config(model.state_dict()).num_heads != model.cfg.num_heads == 2  # what a bare file would give
    run = tmp_path / "run.pth"
    torch.save({"model": model.state_dict(), "model_config": model.cfg.to_dict(),
                "config": {"data": {"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3], "format": "image"}}}, run)
    folder = convert_file(run, tmp_path / "hf", "hf")
    hf = ViTMAEForPreTraining.from_pretrained(str(folder))
    hf.save_pretrained(str(tmp_path / "shards"), max_shard_size="100KB")  # model.safetensors.index.json + shards
    (tmp_path / "bin").mkdir()  # as older hub repositories hold them: pytorch_model.bin beside config.json
    torch.save(hf.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    hub_config = json.loads((folder / "config.json").read_text())
    hub_config["layer_norm_eps"] = 1e-12  # what the hub's ViTMAE configs say (transformers' default): read, logged
    (tmp_path / "bin" / "config.json").write_text(json.dumps(hub_config))
    assert (tmp_path / "shards" / "model.safetensors.index.json").is_file()
    assert (tmp_path / "bin" / "pytorch_model.bin").is_file()
    for path in (folder, tmp_path / "shards", tmp_path / "bin"):
        loaded = load_pretrained(path)
        assert loaded.cfg == model.cfg, path
        assert torch.equal(_outputs(loaded), _outputs(model)), path
    from openmae.data.normalization import recorded_stats

    assert recorded_stats(load_file(folder)) == {"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3], "format": "image"}
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty is a folder without model.safetensors or pytorch_model.bin"):
        load_file(tmp_path / "empty")


def test_openmae_safetensors_carry_the_config_and_normalisation(tmp_path):
    from openmae.convert.export import convert_file

    model = openmae.create_model("mae_vit_debug_patch4_32")
    run = tmp_path / "run.pth"
    torch.save({"model": model.state_dict(), "model_config": model.cfg.to_dict(),
                "config": {"data": {"mean": [0.4], "std": [0.2], "format": "image"}}}, run)
    obj = load_file(convert_file(run, tmp_path / "mae.safetensors", "openmae"))
    assert obj["model_config"] == model.cfg.to_dict() and obj["normalization"]["mean"] == [0.4]
    assert load_pretrained(tmp_path / "mae.safetensors").cfg.num_heads == 2
    # timm's layout: the encoder's tensors as timm reads them (metadata aside), with the config beside them
    timm = load_file(convert_file(run, tmp_path / "enc.safetensors", "timm"))
    assert timm["model_config"] == model.cfg.to_dict() and timm["normalization"]["mean"] == [0.4]
    assert set(timm["model"]) == set(model.encoder_state_dict())
    from safetensors.torch import load_file as plain_load

    assert set(plain_load(tmp_path / "enc.safetensors")) == set(model.encoder_state_dict())
    # the official layout stays a bare tensor file; a file without a stored config gets no guessed one
    assert all(isinstance(v, torch.Tensor) for v in load_file(convert_file(run, tmp_path / "off.safetensors",
                                                                            "official")).values())
    torch.save({"model": model.state_dict()}, tmp_path / "bare.pth")
    assert all(isinstance(v, torch.Tensor) for v in load_file(convert_file(tmp_path / "bare.pth", tmp_path /
                                                                            "bare.safetensors", "timm")).values())


def test_decoder_blocks_as_transformers_5_saves_them_are_read():
    """transformers 5.x's save_pretrained names the decoder's blocks decoder.decoder_encoder.layer.{i} (5.24 does),
    and reads them back so; openmae reads them too."""
    from openmae.convert.hf import hf_to_openmae

    model = openmae.create_model("mae_vit_debug_patch4_32")
    hub = openmae_to_hf(model.state_dict(), layout="v4")
    saved = {k.replace("decoder.decoder_layers.", "decoder.decoder_encoder.layer."): v for k, v in hub.items()}
    assert saved.keys() != hub.keys()
    again = hf_to_openmae(saved)
    assert again.keys() == model.state_dict().keys()
    assert all(torch.equal(again[k], v) for k, v in model.state_dict().items())


def test_timm_loads_a_converted_encoder_by_its_own_pretrained_mechanism(tmp_path):
    """`convert --to timm` then timm.create_model(..., pretrained=True, pretrained_cfg_overlay=dict(file=...)), as the
    README shows: timm loads the file strictly and gives the encoder's features; the mean / std put in the overlay
    reach timm's data config."""
    import timm
    from timm.data import resolve_data_config

    from openmae.convert.export import convert_file

    model = openmae.create_model("mae_vit_tiny_patch16")
    run = tmp_path / "run.pth"
    torch.save({"model": model.state_dict(), "model_config": model.cfg.to_dict()}, run)
    path = convert_file(run, tmp_path / "vit_t.safetensors", "timm")
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=True, num_classes=0, pretrained_cfg_overlay=dict(
        file=str(path), mean=(0.3, 0.4, 0.5), std=(0.2, 0.2, 0.2))).eval()
    assert resolve_data_config(model=vit)["mean"] == (0.3, 0.4, 0.5)
    imgs = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(vit.forward_features(imgs), model.eval().forward_features(imgs), rtol=1e-5,
                                   atol=1e-5)


def test_a_run_folder_given_as_weights_reads_its_last_weights(tmp_path, datasets, caplog):
    """`--checkpoint runs/mine` (or `pretrain.init=runs/mine`, `openmae convert runs/mine ...`): the run folder's
    model-last.pth, written with each checkpoint; before, "a folder without model.safetensors" as if it were a
    Hugging Face folder. One that has saved nothing yet says so. A folder given where settings go names the flags."""
    from helpers import call_cli, tiny_pretrain

    from openmae.engine.pretrain import pretrain

    run = tmp_path / "run"
    pretrain(tiny_pretrain(run, datasets, "train.epochs=1"))
    caplog.set_level("INFO")
    got, want = load_file(run), load_file(run / "model-last.pth")
    assert got.keys() == want.keys() and all(torch.equal(got["model"][k], v) for k, v in want["model"].items())
    assert f"{run} is a run folder: reading its model-last.pth" in caplog.text
    (run / "model-last.pth").unlink()
    with pytest.raises(FileNotFoundError, match=r"is a run folder without weights yet: it has no model-last.pth"):
        load_file(run)
    proc = call_cli("knn", str(run))
    assert proc.returncode == 2
    assert f"unexpected argument '{run}': it is a folder, give it as --checkpoint {run} or --data {run}" in proc.stderr


@pytest.mark.parametrize("kind", ["finetune", "probe_cls", "probe_mean"])
def test_a_classifier_goes_to_timm_and_hugging_face_with_its_head_classes_and_normalisation(tmp_path, datasets, kind):
    """A fine-tuned classifier or online probe: `--to hf` wrote a ViTMAEForPreTraining without its head and fc_norm,
    `--to timm` its encoder alone. Now a folder that timm (`local-dir:`) and transformers'
    AutoModelForImageClassification / AutoImageProcessor load, giving the run's logits, class names and
    normalisation; `--to timm` to a file, a state dict timm loads strictly (a probe's BatchNorm head folded)."""
    import safetensors.torch
    import timm
    from test_finetune import tiny_finetune
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from openmae.config import load_config
    from openmae.convert.export import convert_file
    from openmae.engine.evaluate import EvaluateConfig, load_classifier, run_evaluate
    from openmae.engine.finetune import finetune
    from openmae.engine.linprobe import LinprobeConfig, linprobe

    run = tmp_path / "run"
    if kind == "finetune":
        finetune(tiny_finetune(run, datasets, "train.epochs=1"))
    else:
        linprobe(load_config(LinprobeConfig, overrides=[
            "model.name=mae_vit_debug_patch4_32", f"data.root={datasets}", "data.name=cifar10", "data.max_samples=64",
            "data.max_eval_samples=32", "data.num_workers=0", "linprobe.mode=online", f"linprobe.pooling={kind[6:]}",
            "train.epochs=1", "train.warmup_epochs=0", "train.batch_size=16", "train.progress=false",
            "train.tensorboard=false", f"train.output_dir={run}"]))
    best = run / "model-best.pth"
    ours, ours_cfg = load_classifier(str(best))
    folder = convert_file(best, tmp_path / "hf", "hf")
    flat = convert_file(best, tmp_path / "flat.safetensors", "timm")
    config = json.loads((folder / "config.json").read_text())
    plain = timm.create_model(config["architecture"], num_classes=10, **config["model_args"])
    plain.load_state_dict(safetensors.torch.load_file(flat))  # strict, as a timm user reads it
    by_timm = timm.create_model(f"local-dir:{folder}", pretrained=True)
    by_hf = AutoModelForImageClassification.from_pretrained(folder)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = ours.eval()(images)
        for got in (plain.eval()(images), by_timm.eval()(images), by_hf.eval()(pixel_values=images).logits):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert by_hf.config.id2label[3] == "cat" and by_hf.config.num_labels == 10  # CIFAR-10's fourth class
    stats = load_file(best)["normalization"]
    processor = AutoImageProcessor.from_pretrained(folder)
    assert list(processor.data_config["mean"]) == stats["mean"] and list(processor.data_config["std"]) == stats["std"]
    assert "tag" not in config["pretrained_cfg"] and "num_classes" not in config["model_args"]
    last = convert_file(run / "model-last.pth", tmp_path / "last", "hf")  # the run's last weights name them too
    assert json.loads((last / "config.json").read_text())["label_names"] == config["label_names"]
    read = load_file(folder)  # the folder as a checkpoint: its shape (2 heads) and normalisation from config.json
    shape = ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio")
    assert {k: read["model_config"][k] for k in shape} == {k: ours_cfg.to_dict()[k] for k in shape}
    assert read["normalization"] == stats
    measured = [run_evaluate(load_config(EvaluateConfig, overrides=[
        f"evaluate.init={weights}", "data.name=cifar10", f"data.root={datasets}", "data.max_eval_samples=32",
        "data.num_workers=0"])) for weights in (best, folder)]  # the folder evaluated as the run's own file is
    assert measured[1]["top1"] == measured[0]["top1"]
    assert measured[1]["eval_loss"] == pytest.approx(measured[0]["eval_loss"], rel=1e-5)
    if kind == "finetune":  # kNN / probes read an encoder's final norm, which average pooling replaced
        with pytest.raises(StateDictMismatch, match="fine-tuned with average pooling has no final norm"):
            load_pretrained(best)
    with pytest.raises(ValueError, match="a classifier goes to Hugging Face as a folder"):
        convert_file(best, tmp_path / "x.safetensors", "hf")


def test_an_encoder_goes_to_a_timm_folder(tmp_path):
    """`--to timm` to a path without suffix: a folder timm creates the encoder from (`local-dir:`), its features
    those of the MAE's encoder (it was a torch.save file without a suffix)."""
    import timm

    from openmae.convert.export import convert_file

    model = openmae.create_model("mae_vit_debug_patch4_32")  # 2 heads of 32: what its file records
    path = save_file({"model": model.state_dict(), "model_config": model.cfg.to_dict()}, tmp_path / "mae.pth")
    folder = convert_file(path, tmp_path / "encoder", "timm")
    encoder = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(encoder.forward_features(images), model.eval().forward_features(images),
                                   rtol=1e-5, atol=1e-5)


def test_weights_by_address_or_hugging_face_hub_name_are_downloaded_once(tmp_path, monkeypatch):
    """`--checkpoint facebook/vit-mae-base`, `hf-hub:timm/...@rev`, or an official checkpoint's https:// address:
    before, "no such checkpoint file". The hub through huggingface_hub (its cache), an address into torch's hub
    cache, once; the transfers themselves are stood in for (no network here). A mistyped local path is not sent to
    the hub; a failed download says what to check."""
    import huggingface_hub

    from openmae.convert.export import convert_file
    from openmae.convert.files import HUB_FILES

    model = openmae.create_model("mae_vit_debug_patch4_32")
    official = tmp_path / "mae_visualize_debug.pth"
    torch.save({"model": model.state_dict()}, official)
    hub_copy = convert_file(official, tmp_path / "hub" / "vit-mae-debug", "hf")
    asked = []

    def snapshot_download(repo_id, revision=None, allow_patterns=None):
        asked.append((repo_id, revision, allow_patterns))
        if repo_id != "facebook/vit-mae-debug":
            raise huggingface_hub.errors.LocalEntryNotFoundError("Cannot find the requested files in the disk cache "
                                                                 "and outgoing traffic has been disabled")  # offline
        return str(hub_copy)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    for name in ("facebook/vit-mae-debug", "hf-hub:facebook/vit-mae-debug@v1.0"):
        sd = load_file(name)["model"]
        assert all(torch.equal(sd[k], v) for k, v in openmae_to_hf(model.state_dict(), layout="v4").items())
    assert asked == [("facebook/vit-mae-debug", None, HUB_FILES), ("facebook/vit-mae-debug", "v1.0", HUB_FILES)]
    assert load_pretrained("facebook/vit-mae-debug").cfg.embed_dim == 64  # anywhere weights are read
    with pytest.raises(FileNotFoundError, match=r"no file or folder facebook/vit-mae-nope here, and the Hugging Face "
                                                r"hub model .* could not be had \(LocalEntryNotFoundError: Cannot find"):
        load_file("facebook/vit-mae-nope")
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    asked.clear()
    with pytest.raises(FileNotFoundError, match="no such checkpoint file or model folder: runs/mine"):
        load_file("runs/mine")  # a local folder of that name: a mistyped path, not a hub name
    assert asked == []

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch_hub"))
    fetched = []
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda url, dst, progress=True: fetched.append(url) or Path(dst).write_bytes(official.read_bytes()))
    url = "https://dl.fbaipublicfiles.com/mae/visualize/mae_visualize_vit_debug.pth"
    for _ in range(2):
        sd = load_file(url)["model"]
        assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())
    assert fetched == [url] and (tmp_path / "torch_hub" / "checkpoints" / "mae_visualize_vit_debug.pth").is_file()
