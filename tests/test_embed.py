"""``openmae embed``: an encoder's features of every image of a split in a safetensors file (the features kNN and
cached probes read), the images in a CSV in the same order, labels where there are classes, a map of them; under
torchrun the same file as one process."""

import csv
import json

import numpy as np
import pytest
import torch
from helpers import call_cli, torchrun
from safetensors import safe_open
from safetensors.torch import load_file

import openmae
from openmae.config import ConfigError, load_config
from openmae.data.build import eval_batches, source_for
from openmae.engine.knn_eval import load_encoder_model
from openmae.engine.task_config import EmbedConfig
from openmae.eval.features import extract_features


def test_embed_writes_the_features_knn_reads_with_the_images_in_order(tmp_path, datasets):
    encoder = tmp_path / "encoder.pth"
    torch.manual_seed(1)
    mae = openmae.create_model("mae_vit_debug_patch4_32")
    torch.save({"model": mae.encoder_state_dict(), "model_config": mae.cfg.to_dict()}, encoder)
    out = tmp_path / "emb" / "cifar.safetensors"
    args = [f"--data-root={datasets}", "data.name=cifar10", "embed.split=test", "data.max_samples=30",
            "embed.pooling=cls+mean", "embed.last_blocks=2", "embed.batch_size=8", "data.num_workers=0"]
    proc = call_cli("embed", "--checkpoint", str(encoder), "-o", str(out), "--plot", str(tmp_path / "map.png"), *args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == {"output": str(out), "images": 30, "width": 256, "classes": 10}

    # the features kNN computes: the same encoder, images and pooling
    cfg = load_config(EmbedConfig, overrides=[f"embed.init={encoder}", f"data.root={datasets}", *args[1:]])
    model, m = load_encoder_model(cfg.model, str(encoder), data=cfg.data)
    source = source_for(cfg.data, "test", m.in_chans, 30)
    feats, labels = extract_features(model, eval_batches(cfg.data, "test", m.img_size, m.in_chans, 8, source=source),
                                     torch.device("cpu"), "cls+mean", last_blocks=2)
    written = load_file(out)
    assert written["features"].shape == (30, 256)  # 2 blocks x (cls + mean) x 64
    torch.testing.assert_close(written["features"], feats, rtol=0, atol=1e-6)
    assert torch.equal(written["labels"], labels)
    with safe_open(out, "pt") as fh:
        how = json.loads(fh.metadata()["openmae_embeddings"])
    assert how["pooling"] == "cls+mean" and how["last_blocks"] == 2 and how["split"] == "test" and len(how["classes"]) == 10
    rows = list(csv.DictReader((out.with_suffix(".csv")).open()))
    assert [r["image"] for r in rows] == [source.describe(i) for i in range(30)]
    assert [r["label"] for r in rows] == [how["classes"][int(y)] for y in labels]
    assert (tmp_path / "map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # an unlabelled folder: features and the images, no labels
    folder = tmp_path / "photos.safetensors"
    proc = call_cli("embed", "--data", str(datasets / "imagenet-sample"), "-o", str(folder),
                    "model.name=mae_vit_debug_patch4_32", "data.max_samples=6", "data.num_workers=0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert set(load_file(folder)) == {"features"} and load_file(folder)["features"].shape == (6, 64)
    rows = list(csv.DictReader(folder.with_suffix(".csv").open()))
    assert list(rows[0]) == ["index", "image"] and rows[0]["image"].endswith(".JPEG")
    with pytest.raises(ConfigError, match="embed.output='features.npy' is invalid: must be a .safetensors file"):
        load_config(EmbedConfig, overrides=["embed.output=features.npy", f"data.path={datasets}"])
    assert "embed.output='features.npy' is invalid: must be a .safetensors file" in call_cli(
        "embed", "-o", "features.npy", "--data", str(datasets / "imagenet-sample")).stderr


def test_embed_under_torchrun_writes_what_one_process_writes(tmp_path, datasets):
    encoder = tmp_path / "encoder.pth"
    mae = openmae.create_model("mae_vit_debug_patch4_32")
    torch.save({"model": mae.encoder_state_dict(), "model_config": mae.cfg.to_dict()}, encoder)
    args = [f"--data-root={datasets}", "data.name=cifar10", "embed.split=test", "data.max_samples=21",
            "embed.batch_size=4", "data.num_workers=0", "embed.pooling=mean"]
    one = call_cli("embed", "--checkpoint", str(encoder), "-o", str(tmp_path / "one.safetensors"), *args)
    assert one.returncode == 0, one.stderr[-2000:]
    two = torchrun("-m", "openmae", "embed", "--checkpoint", str(encoder), "-o", str(tmp_path / "two.safetensors"),
                   *args, timeout=180)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = load_file(tmp_path / "one.safetensors"), load_file(tmp_path / "two.safetensors")
    assert a["features"].shape == (21, 64)  # 21 images over 2 ranks: 11 each, one a repeat, dropped
    torch.testing.assert_close(b["features"], a["features"], rtol=0, atol=1e-5)
    assert torch.equal(a["labels"], b["labels"])
    assert (tmp_path / "one.csv").read_text() == (tmp_path / "two.csv").read_text()
    assert np.isfinite(a["features"].numpy()).all()
