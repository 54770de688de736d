"""kNN, reconstruction pictures and conversion through the command line."""

import os

import numpy as np
import pytest
import torch
from helpers import call_cli
from PIL import Image

import openmae
from openmae.convert.files import load_file, save_file
from openmae.eval.knn import knn_accuracy, knn_accuracy_grid, knn_predict, standardize
from openmae.eval.reconstruction import reconstruct


def test_knn_separable_is_perfect():
    gen = torch.Generator().manual_seed(0)
    centers = torch.eye(4) * 10
    train_labels = torch.arange(4).repeat(50)
    train = centers[train_labels] + torch.randn(200, 4, generator=gen)
    test_labels = torch.arange(4).repeat(10)
    test = centers[test_labels] + torch.randn(40, 4, generator=gen)
    assert knn_accuracy(train, train_labels, test, test_labels, 4, k=5)["knn_top1"] == 100.0


def test_knn_balanced_accuracy_weighs_each_class_alike():
    """Nine test images of class 0 and one of class 1, all found as class 0: top-1 90%, balanced accuracy 50% (the
    rare class missed), macro F1 (94.7 + 0) / 2."""
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    test = torch.tensor([[1.0, 0.1]] * 10)
    out = knn_accuracy(train, torch.tensor([0, 1]), test, torch.tensor([0] * 9 + [1]), 2, k=1)
    assert (out["knn_top1"], out["knn_balanced_accuracy"]) == (90.0, 50.0)
    assert out["knn_macro_f1"] == pytest.approx(100 * (18 / 19 + 0) / 2)


def test_knn_hand_made_example():
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    query = torch.tensor([[0.6, 0.8]])  # cos sims: 0.6, 0.6613..., 0.8
    scores = knn_predict(train, labels, query, 2, k=2, temperature=0.1)
    s = torch.nn.functional.normalize(train, dim=1) @ torch.nn.functional.normalize(query, dim=1).T
    expected = torch.tensor([[torch.exp(s[1, 0] / 0.1), torch.exp(s[2, 0] / 0.1)]])  # top-2: items 2 and 1
    torch.testing.assert_close(scores, expected)
    assert knn_predict(train, labels, query, 2, k=3, temperature=1.0).argmax().item() == 0  # two weaker votes win


def test_knn_grid_equals_one_search_per_setting():
    gen = torch.Generator().manual_seed(1)
    train, test = torch.randn(300, 8, generator=gen), torch.randn(70, 8, generator=gen)
    labels, test_labels = torch.randint(0, 5, (300,), generator=gen), torch.randint(0, 5, (70,), generator=gen)
    grid = knn_accuracy_grid(train, labels, test, test_labels, 5, (1, 7, 20), (0.05, 0.5), chunk=32)
    assert len(set(grid.values())) > 1  # the settings do differ on this data
    for (k, t), acc in grid.items():
        one = knn_accuracy(train, labels, test, test_labels, 5, k, t)["knn_top1"]
        # both from the counts: equal to the last bit, a whole count of the 70 (a float32 mean missed by ~1e-6)
        assert acc == one and round(one * 70 / 100) * 100 / 70 == one, (k, t, acc, one)
    with pytest.raises(ValueError, match="temperature must be > 0, got 0"):
        knn_accuracy_grid(train, labels, test, test_labels, 5, (5,), (0,))


def test_knn_chunks_keep_the_similarities_under_their_budget_and_score_alike(monkeypatch, caplog):
    """A chunk's (m, N) similarities are held to knn.SIMILARITY_BYTES (ImageNet's 1.28 M training features: 209 test
    features a chunk, not 1,024 at 5.2 GB); any chunking scores alike; the search goes to a GPU only when the
    features fit there."""
    from openmae.eval import knn

    assert knn.chunk_rows(1024, 1_281_167) == 209 and knn.chunk_rows(1024, 50_000) == 1024
    gen = torch.Generator().manual_seed(2)
    train, test = torch.randn(300, 8, generator=gen), torch.randn(70, 8, generator=gen)
    labels = torch.randint(0, 5, (300,), generator=gen)
    whole = knn_predict(train, labels, test, 5, k=20)
    sizes = []
    real = knn.F.normalize
    monkeypatch.setattr(knn.F, "normalize", lambda x, dim: sizes.append(len(x)) or real(x, dim=dim))
    monkeypatch.setattr(knn, "SIMILARITY_BYTES", 300 * 4 * 16)  # 16 rows of similarities
    torch.testing.assert_close(knn_predict(train, labels, test, 5, k=20, device="cpu"), whole, rtol=1e-5, atol=0)
    assert sizes == [300, 16, 16, 16, 16, 6]  # the training features, then the test features a chunk at a time
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2 << 30, 80 << 30))  # 2 GiB free
    assert knn.search_device(train, "cuda") == torch.device("cuda")
    big = torch.empty(2_000_000, 768, device="meta")  # 6.1 GB of features
    with caplog.at_level("WARNING", logger="openmae.knn"):
        assert knn.search_device(big, "cuda") == torch.device("cpu")
    assert "the kNN search runs on the CPU: its 2000000 training features" in caplog.text
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 15 << 30)  # PyTorch holds 15 GiB,
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 3 << 30)  # 12 of them unused
    assert knn.search_device(big, "cuda") == torch.device("cuda")
    assert knn.search_device(train, None) == torch.device("cpu") and knn.search_device(train, "cpu").type == "cpu"


def test_standardize_lets_a_small_informative_dimension_vote():
    """Cosine similarity of raw features is ruled by a large uninformative dimension and an offset (the class
    changes the angle less than the noise does); scaled by the training features' mean and std, the
    informative dimension decides. Test features are moved with the training statistics."""
    gen = torch.Generator().manual_seed(0)

    def make(n):
        labels = torch.arange(2).repeat(n // 2)
        noise, signal = 1 + 199 * torch.rand(n, generator=gen), 10 + labels + 0.01 * torch.randn(n, generator=gen)
        return torch.stack([noise, signal], 1), labels

    (train, labels), (test, test_labels) = make(200), make(40)
    raw = knn_accuracy(train, labels, test, test_labels, 2, k=5)["knn_top1"]
    tr, te = standardize(train, test)
    assert raw < 70 and knn_accuracy(tr, labels, te, test_labels, 2, k=5)["knn_top1"] == 100.0
    torch.testing.assert_close(tr.mean(0), torch.zeros(2), atol=1e-4, rtol=0)
    torch.testing.assert_close(te, (test - train.mean(0)) / train.std(0))


def test_cls_plus_mean_pooling_concatenates_both():
    from openmae.eval.features import pool, pooled_width

    tokens = torch.randn(3, 5, 4)  # (N, 1 + L, D)
    both = pool(tokens, "cls+mean")
    assert both.shape == (3, pooled_width("cls+mean", 4)) == (3, 8)
    torch.testing.assert_close(both, torch.cat([pool(tokens, "cls"), pool(tokens, "mean")], 1), rtol=0, atol=0)


def test_knn_command_on_a_holdout_equals_the_library_path(datasets):
    """`openmae knn` with data.holdout, standardised cls+mean features of 2 blocks: the same number as
    computing those features by hand on the kept / held-out training images."""
    from openmae.config import load_config
    from openmae.data.build import eval_batches, source_for
    from openmae.data.config import DataConfig
    from openmae.engine.config import ModelSection
    from openmae.engine.knn_eval import KnnConfig, knn_eval, load_encoder_model
    from openmae.eval.features import extract_features

    data = dict(name="fashion-mnist", root=str(datasets), max_samples=1500, max_eval_samples=500, holdout=0.25,
                num_workers=0)
    model = ["model.name=mae_vit_tiny_patch7_28_gray", "model.depth=3"]
    out = knn_eval(load_config(KnnConfig, overrides=[*(f"data.{k}={v}" for k, v in data.items()), *model,
                                                     "knn.pooling=cls+mean", "knn.last_blocks=2", "knn.standardize=true",
                                                     "knn.k=10"]))
    cfg = DataConfig(**data)
    mae, _ = load_encoder_model(ModelSection(name="mae_vit_tiny_patch7_28_gray", depth=3), "")
    feats = [extract_features(mae, eval_batches(cfg, split, (28, 28), 1, 256, limit), torch.device("cpu"), "cls+mean",
                              last_blocks=2) for split, limit in (("train", 1500), ("test", 500))]
    assert feats[0][0].shape == (1500, 2 * 2 * 192)
    held = source_for(cfg, "test", 1, 500)
    assert torch.equal(feats[1][1], torch.tensor([held.load(i)[1] for i in range(500)]))
    tr, te = standardize(feats[0][0], feats[1][0])
    expected = knn_accuracy(tr, feats[0][1], te, feats[1][1], 10, k=10)
    assert (out["train_samples"], out["eval_samples"]) == (1500, 500)
    assert out["knn_top1"] == pytest.approx(expected["knn_top1"], abs=1e-9)


@pytest.mark.parametrize("kind", ["encoder", "classifier"])
def test_visualizing_an_encoder_without_its_decoder_is_refused_saying_how_to_train_one(tmp_path, datasets, kind):
    """An encoder-only file (the official mae_pretrain_vit_* layout) would be drawn by an untrained decoder (noise):
    refused, naming the run that trains a decoder behind it. A classifier fine-tuned with average pooling (no final
    norm) alike (it was refused for the norm it lacks, which pretraining from it now starts afresh)."""
    from openmae.models.vit import create_classifier

    model = openmae.create_model("mae_vit_debug_patch4_32")
    ckpt = tmp_path / "mae_pretrain_vit_debug.pth"
    weights = model.encoder_state_dict() if kind == "encoder" else create_classifier(model.cfg, 10, "avg").state_dict()
    torch.save({"model": weights}, ckpt)
    photo = sorted((datasets / "imagenet-sample").glob("*.JPEG"))[0]
    proc = call_cli("visualize", "--checkpoint", str(ckpt), str(photo), "-o", str(tmp_path / "pics"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert (f"{ckpt} holds an encoder without its MAE decoder, and visualize needs one to reconstruct: train a "
            f"decoder behind the frozen encoder first (`openmae pretrain --data <images> -o runs/decoder "
            f"model.name=auto pretrain.init={ckpt} pretrain.tune_blocks=0`)") in " ".join(proc.stderr.split())
    assert not (tmp_path / "pics").exists()


@pytest.mark.parametrize("norm_pix", [False, True])
def test_visualization_of_real_photo(tmp_path, datasets, norm_pix):
    model = openmae.create_model("mae_vit_debug_patch4_32", img_size=64, patch_size=8, norm_pix_loss=norm_pix)
    ckpt = tmp_path / "mae.pth"
    torch.save({"model": model.state_dict(), "model_config": model.cfg.to_dict()}, ckpt)
    photo = sorted((datasets / "imagenet-sample").glob("*.JPEG"))[0]
    proc = call_cli("visualize", "--checkpoint", str(ckpt), str(photo), "-o", str(tmp_path / "pics"))
    assert proc.returncode == 0, proc.stderr
    png = Image.open(tmp_path / "pics" / f"{photo.stem}.png")
    assert png.size == (4 * 128 + 6, 128)  # 64px images enlarged twice, four panels with 2px gaps
    # the pasted panel equals the input on visible patches, the reconstruction on removed ones
    imgs = torch.randn(2, 3, 64, 64)
    rec = reconstruct(model, imgs, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), seed=3)
    visible = (rec.mask == 0).view(2, 8, 8).repeat_interleave(8, 1).repeat_interleave(8, 2).unsqueeze(1)
    assert torch.equal(rec.pasted * visible, rec.original * visible)
    assert torch.equal(rec.pasted * ~visible, rec.reconstruction * ~visible)
    arr = np.asarray(png)
    assert arr[:, :128].std() > 10  # the original panel is a photo, not a flat colour


def test_visualize_names_each_picture_apart_and_leaves_out_unreadable_images(tmp_path):
    """Pictures are named by their files' stems: cat/001.png and dog/001.png (or x.png and x.webp) wrote the same
    picture, the second over the first. An unreadable file stopped the command with a traceback; it is left out with
    a warning (data.bad_files=fail: a one-line error naming it), and a list of unreadable files alone is an error."""
    model = openmae.create_model("mae_vit_tiny_patch7_28_gray", depth=1, decoder_depth=1)
    ckpt = tmp_path / "mae.pth"
    torch.save({"model": model.state_dict(), "model_config": model.cfg.to_dict()}, ckpt)
    shots = tmp_path / "shots"
    for cls in ("cat", "dog"):
        (shots / cls).mkdir(parents=True)
        Image.new("L", (28, 28), 80 if cls == "cat" else 160).save(shots / cls / "001.png")
    Image.new("L", (28, 28), 10).save(shots / "x.png")
    Image.new("L", (28, 28), 200).save(shots / "x.webp", lossless=True)
    (shots / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    proc = call_cli("visualize", "--checkpoint", str(ckpt), "-o", str(tmp_path / "pics"), str(shots))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "pics").iterdir()) == ["cat-001.png", "dog-001.png", "x-png.png",
                                                                      "x-webp.png"]
    assert "no picture of an unreadable image" in proc.stderr and "broken.jpg" in proc.stderr
    # each picture is of its own file: the original panels differ as the files' grey levels do
    first_panel = {name: np.asarray(Image.open(tmp_path / "pics" / name))[:, :112].mean()
                   for name in ("cat-001.png", "dog-001.png", "x-png.png", "x-webp.png")}
    assert first_panel["x-png.png"] < first_panel["cat-001.png"] < first_panel["dog-001.png"] < first_panel["x-webp.png"]
    proc = call_cli("visualize", "--checkpoint", str(ckpt), "-o", str(tmp_path / "strict"), str(shots),
                    "data.bad_files=fail")
    assert proc.returncode == 1 and "openmae visualize: error: " in proc.stderr and "broken.jpg" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = call_cli("visualize", "--checkpoint", str(ckpt), "-o", str(tmp_path / "none"), str(shots / "broken.jpg"))
    assert proc.returncode == 1 and "none of the 1 images could be read" in proc.stderr


def test_convert_cli_roundtrip(tmp_path):
    model = openmae.create_model("mae_vit_debug_patch4_32")
    official = tmp_path / "official.pth"
    torch.save({"model": model.state_dict()}, official)
    for to, dst in (("hf", tmp_path / "hf"), ("timm", tmp_path / "enc.safetensors"), ("openmae", tmp_path / "o.pth")):
        proc = call_cli("convert", str(official), str(dst), "--to", to)
        assert proc.returncode == 0, proc.stderr
    back = tmp_path / "back.pth"
    assert call_cli("convert", str(tmp_path / "hf" / "model.safetensors"), str(back), "--to", "official").returncode == 0
    sd = load_file(back)["model"]
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items()) and sd.keys() == model.state_dict().keys()
    timm_sd = load_file(tmp_path / "enc.safetensors")
    assert set(timm_sd) == set(model.encoder_state_dict())
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    hf = ViTMAEForPreTraining.from_pretrained(str(tmp_path / "hf"))
    hf_sd = {k: v for k, v in hf.state_dict().items()}
    from openmae.convert.hf import hf_to_openmae

    again = hf_to_openmae(hf_sd)
    assert all(torch.equal(again[k], v) for k, v in model.state_dict().items())
    assert isinstance(hf.config, ViTMAEConfig) and hf.config.layer_norm_eps == 1e-6


def test_visualize_dataset_items(tmp_path, datasets):
    model = openmae.create_model("mae_vit_tiny_patch7_28_gray", depth=1, decoder_depth=1)
    ckpt = tmp_path / "mae.pth"
    torch.save({"model": model.state_dict(), "model_config": model.cfg.to_dict()}, ckpt)
    proc = call_cli("visualize", "--checkpoint", str(ckpt), "--count", "3", "-o", str(tmp_path / "pics"),
                   "data.name=fashion-mnist", f"data.root={datasets}")
    assert proc.returncode == 0, proc.stderr
    pngs = sorted((tmp_path / "pics").glob("test-*.png"))
    assert [p.name for p in pngs] == ["test-00000.png", "test-00001.png", "test-00002.png"]
    assert Image.open(pngs[0]).size == (4 * 112 + 6, 112)  # 28px enlarged 4x
    # a folder given: all of its images, or --count of them spread over it (--count was ignored: a folder of 1,000
    # photos wrote 1,000 pictures)
    for cls in ("a", "b"):
        (tmp_path / "shots" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("L", (28, 28), 40 * i).save(tmp_path / "shots" / cls / f"{cls}{i}.png")
    proc = call_cli("visualize", "--checkpoint", str(ckpt), "--count", "2", "-o", str(tmp_path / "some"),
                    str(tmp_path / "shots"))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "some").iterdir()) == ["a0.png", "b0.png"]
    assert call_cli("visualize", "--checkpoint", str(ckpt), "-o", str(tmp_path / "all"), str(tmp_path / "shots")
                    ).returncode == 0
    assert len(list((tmp_path / "all").iterdir())) == 6
    proc = call_cli("visualize", "--checkpoint", str(ckpt), "--count", "0", str(tmp_path / "shots"))
    assert proc.returncode == 2 and "--count=0: give the number of pictures" in proc.stderr


def test_cached_probe_head_reads_cls_plus_mean_of_several_blocks(datasets, tmp_path):
    from openmae.config import load_config
    from openmae.engine.linprobe import LinprobeConfig, LinprobeTask

    cfg = load_config(LinprobeConfig, overrides=[
        "data.name=fashion-mnist", f"data.root={datasets}", "data.max_samples=300", "data.max_eval_samples=100",
        "data.holdout=0.5", "data.num_workers=0", "model.name=mae_vit_tiny_patch7_28_gray", "model.depth=3",
        "linprobe.mode=cached", "linprobe.pooling=cls+mean", "linprobe.last_blocks=2", f"train.output_dir={tmp_path}"])
    task = LinprobeTask(cfg, torch.device("cpu"))
    assert task.classifier.head[1].in_features == 2 * 2 * 192
    assert task.train_feats[0].shape == (300, 768) and task.eval_feats[0].shape == (100, 768)


def test_cached_probe_reports_the_test_split_beside_held_out_images(datasets, tmp_path):
    """linprobe with data.holdout + data.report_eval_split: features of the real test split are cached beside the
    held-out ones, and test_top1 is the trained head's accuracy on them (top1 stays the held-out accuracy)."""
    from openmae.config import load_config
    from openmae.data.loader import Batch
    from openmae.engine.classifier import evaluate
    from openmae.engine.linprobe import LinprobeConfig, LinprobeTask
    from openmae.engine.loop import launch

    cfg = load_config(LinprobeConfig, overrides=[
        "data.name=fashion-mnist", f"data.root={datasets}", "data.max_samples=300", "data.max_eval_samples=100",
        "data.holdout=0.5", "data.report_eval_split=true", "data.num_workers=0", "model.name=mae_vit_tiny_patch7_28_gray",
        "model.depth=2", "linprobe.mode=cached", "train.epochs=2", "train.warmup_epochs=0", "train.batch_size=50",
        "train.progress=false", "train.tensorboard=false", f"train.output_dir={tmp_path}"])
    task = LinprobeTask(cfg, torch.device("cpu"))
    assert task.report_feats[0].shape == task.eval_feats[0].shape == (100, 192)
    assert not torch.equal(task.report_feats[0], task.eval_feats[0])
    out = launch(lambda info, resume: task, cfg)

    def top1(cached):
        f, y = cached
        return evaluate(task.model, [Batch(f, y, y, 0)], torch.device("cpu"))["top1"]

    assert (out["top1"], out["test_top1"]) == (top1(task.eval_feats), top1(task.report_feats))
    assert out["best_test_top1"] == load_file(tmp_path / "model-best.pth")["metrics"]["test_top1"]


def test_resumed_probe_keeps_the_best_epochs_record(datasets, tmp_path, monkeypatch):
    """The probe's model-best.pth record travels in checkpoints too: after a resume, a worse epoch (scripted top-1:
    50 after epoch 1, 40 after epoch 2) does not replace it."""
    from openmae.config import load_config
    from openmae.engine.linprobe import LinprobeConfig, LinprobeTask, linprobe

    scores = iter([50.0, 40.0])
    monkeypatch.setattr(LinprobeTask, "evaluate", lambda self, info=None: {"top1": next(scores), "top5": 100.0, "eval_loss": 1.0})

    def cfg(*extra):
        return load_config(LinprobeConfig, overrides=[
            "data.name=fashion-mnist", f"data.root={datasets}", "data.max_samples=200", "data.max_eval_samples=50",
            "data.num_workers=0", "model.name=mae_vit_tiny_patch7_28_gray", "model.depth=1", "linprobe.mode=cached",
            "train.epochs=2", "train.warmup_epochs=0", "train.batch_size=50", "train.progress=false",
            "train.tensorboard=false", f"train.output_dir={tmp_path}", *extra])

    assert linprobe(cfg("train.halt_after_steps=4"))["halted"]  # the end of epoch 1
    out = linprobe(cfg("train.resume=auto"))
    assert (out["top1"], out["best_top1"], out["best_epoch"]) == (40.0, 50.0, 1)
    assert load_file(tmp_path / "model-best.pth")["epoch"] == 1


def test_a_resumed_online_probe_does_not_read_init_and_a_cached_one_says_why_it_must(datasets, tmp_path):
    """An online probe's checkpoints hold its frozen encoder: resumed, it finishes after linprobe.init is gone (as
    fine-tuning does), equal to the uninterrupted run; it failed, reading the file again. A cached probe's hold the
    head alone: its features come from the file again, and a missing file says so."""
    from openmae.config import load_config
    from openmae.engine.linprobe import LinprobeConfig, linprobe

    encoder = openmae.create_model("mae_vit_debug_patch4_32")
    init = tmp_path / "init.pth"
    torch.save({"model": encoder.state_dict(), "model_config": encoder.cfg.to_dict()}, init)

    def cfg(out, *extra):
        return load_config(LinprobeConfig, overrides=[
            "data.name=cifar10", f"data.root={datasets}", "data.max_samples=64", "data.max_eval_samples=32",
            "data.num_workers=0", "model.name=auto", f"linprobe.init={init}", "train.epochs=2",
            "train.warmup_epochs=0", "train.batch_size=16", "train.progress=false", "train.tensorboard=false",
            f"train.output_dir={tmp_path / out}", *extra])

    full = linprobe(cfg("full", "linprobe.mode=online"))
    assert linprobe(cfg("cut", "linprobe.mode=online", "train.halt_after_steps=2"))["halted"]
    assert linprobe(cfg("cached", "linprobe.mode=cached", "train.halt_after_steps=2"))["halted"]
    init.unlink()
    resumed = linprobe(cfg("cut", "linprobe.mode=online", "train.resume=auto"))
    a, b = (load_file(tmp_path / d / "model-timm.safetensors")["model"] for d in ("full", "cut"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (full["top1"], full["eval_loss"]) == (resumed["top1"], resumed["eval_loss"])
    with pytest.raises(FileNotFoundError, match=r"init.pth: a cached probe that resumes computes its features from "
                                                r"linprobe.init again"):
        linprobe(cfg("cached", "linprobe.mode=cached", "train.resume=auto"))

@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_online_probe_head_reads_the_pooling_asked_for(datasets, tmp_path, pooling):
    """linprobe.mode=online: the BatchNorm head's input is the pooled feature that kNN and cached probes use for the
    same setting (mean: the final-normed patch tokens averaged), not the cls token whatever the setting."""
    from openmae.config import load_config
    from openmae.engine.linprobe import LinprobeConfig, LinprobeTask
    from openmae.eval.features import encoder_tokens, pool

    cfg = load_config(LinprobeConfig, overrides=[
        "data.name=cifar10", f"data.root={datasets}", "data.max_samples=16", "data.max_eval_samples=16",
        "data.num_workers=0", "model.name=mae_vit_debug_patch4_32", "linprobe.mode=online",
        f"linprobe.pooling={pooling}", f"train.output_dir={tmp_path}"])
    model = LinprobeTask(cfg, torch.device("cpu")).classifier.eval()
    seen = {}
    model.head.register_forward_hook(lambda m, args, out: seen.update(x=args[0]))
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        model(images)
        tokens = encoder_tokens(model, images)
    torch.testing.assert_close(seen["x"], pool(tokens, pooling))
    other = pool(tokens, "cls" if pooling == "mean" else "mean")
    assert not torch.allclose(seen["x"], other)


def test_a_cached_probe_keeps_its_features_and_a_later_probe_of_the_same_encoder_and_images_reads_them(datasets,
                                                                                                      tmp_path):
    """linprobe.feature_cache: the first probe keeps its train / eval / report features; a second of the same encoder
    and images (another learning rate, a resumed run) reads them and never runs the encoder over an image, ending
    where a probe that computes them does; another encoder, other images or another pooling compute (and keep) their
    own; a damaged file is said and computed again."""
    from openmae.config import load_config
    from openmae.engine import linprobe as probe_module
    from openmae.engine.linprobe import LinprobeConfig, linprobe

    encoders = {}
    for name, seed in (("a", 0), ("b", 1)):
        torch.manual_seed(seed)
        encoders[name] = tmp_path / f"{name}.pth"
        save_file({"model": openmae.create_model("mae_vit_debug_patch4_32").state_dict()}, encoders[name])
    cache = tmp_path / "cache"

    def cfg(out, *extra, encoder="a", kept=True):
        return load_config(LinprobeConfig, overrides=[
            "data.name=cifar10", f"data.root={datasets}", "data.max_samples=64", "data.max_eval_samples=32",
            "data.holdout=0.25", "data.report_eval_split=true", "data.num_workers=0", "model.name=auto",
            f"linprobe.init={encoders[encoder]}", "linprobe.mode=cached", "train.epochs=2", "train.warmup_epochs=0",
            "train.batch_size=16", "train.progress=false", "train.tensorboard=false", "train.log_every_steps=1",
            f"train.output_dir={tmp_path / out}", *([f"linprobe.feature_cache={cache}"] if kept else []), *extra])

    computed = []
    real = probe_module.extract_features

    def counted(*args, **kwargs):
        computed.append(1)
        return real(*args, **kwargs)

    probe_module.extract_features = counted
    try:
        linprobe(cfg("first"))
        assert len(computed) == 3 and len(list(cache.glob("*.pt"))) == 3  # train, held-out eval, test report
        computed.clear()
        sweep = linprobe(cfg("sweep", "train.blr=0.3"))
        assert computed == []  # all three read
        assert linprobe(cfg("cut", "train.blr=0.3", "train.halt_after_steps=3"))["halted"]
        resumed = linprobe(cfg("cut", "train.blr=0.3", "train.resume=auto"))
        assert computed == []
        plain = linprobe(cfg("plain", "train.blr=0.3", kept=False))
        assert len(computed) == 3
        for run in (sweep, resumed):
            assert (run["top1"], run["test_top1"], run["eval_loss"]) == (plain["top1"], plain["test_top1"],
                                                                         plain["eval_loss"])
        for case, extra, encoder in (("other encoder", [], "b"), ("other images", ["data.max_samples=48"], "a"),
                                     ("other pooling", ["linprobe.pooling=mean"], "a")):
            computed.clear()
            linprobe(cfg(case.replace(" ", "_"), *extra, encoder=encoder))
            assert len(computed) == 3, case
        assert len(list(cache.glob("*.pt"))) == 4 * 3
        for path in cache.glob("train-*.pt"):  # damaged: cut short
            path.write_bytes(path.read_bytes()[:100])
        computed.clear()
        linprobe(cfg("damaged"))
        assert len(computed) == 1
    finally:
        probe_module.extract_features = real


def test_kept_features_are_keyed_by_the_images_themselves(datasets):
    """Two sets of as many images under the same settings key different features; the same images the same."""
    from openmae.data.build import SourceView
    from openmae.data.config import DataConfig
    from openmae.data.datasets import build_source
    from openmae.eval.feature_cache import cache_path, feature_key

    source = build_source(DataConfig(name="cifar10", root=str(datasets)), "test", 3)

    def key(index):
        return feature_key("eval", "test", SourceView(source, index), "w", {}, {})

    assert cache_path("c", key(range(10))) == cache_path("c", key(range(10)))
    assert cache_path("c", key(range(10))) != cache_path("c", key(range(10, 20)))


def test_kept_features_are_keyed_by_the_files_sizes_and_times(tmp_path):
    """An image rewritten in place under the same name keys other features (the old ones would be stale)."""
    from openmae.data.config import DataConfig
    from openmae.data.datasets import build_source
    from openmae.eval.feature_cache import cache_path, feature_key

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / c / f"{i}.png")

    def key():
        return feature_key("eval", "val", build_source(DataConfig(name="imagefolder", path=str(tmp_path)), "val", 3), "w", {}, {})

    before = key()
    assert cache_path("c", key()) == cache_path("c", before)
    photo = tmp_path / "b" / "1.png"
    stat = photo.stat()
    os.utime(photo, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # written again: a new time, the same size
    assert cache_path("c", key()) != cache_path("c", before)
    with open(photo, "ab") as f:  # another size, the old time
        f.write(b"\0")
    os.utime(photo, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert photo.stat().st_mtime_ns == stat.st_mtime_ns and photo.stat().st_size == stat.st_size + 1
    assert cache_path("c", key()) != cache_path("c", before)


def test_feature_cache_is_for_cached_probes():
    from openmae.config import ConfigError, load_config
    from openmae.engine.linprobe import LinprobeConfig

    with pytest.raises(ConfigError, match="linprobe.feature_cache.*online mode"):
        load_config(LinprobeConfig, overrides=["data.name=cifar10", "linprobe.feature_cache=/tmp/x"])


@pytest.mark.parametrize("terminal", [False, True])
def test_long_passes_over_images_say_how_far_they_came(tmp_path, datasets, monkeypatch, caplog, terminal):
    """kNN's features and `openmae evaluate`'s pass (a million ImageNet images: minutes on end, silent): a line every
    LOG_EVERY_S in a log file (here every batch), with the images done of the total and the time left; a bar on a
    terminal, gone when the pass ends."""
    import io
    import logging
    import re
    import sys

    from openmae.config import load_config
    from openmae.engine.knn_eval import KnnConfig, knn_eval
    from openmae.eval import progress

    class Console(io.StringIO):
        def isatty(self) -> bool:
            return terminal

    console = Console()
    monkeypatch.setattr(sys, "stderr", console)
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    data = [f"data.root={datasets}", "data.name=fashion-mnist", "data.max_samples=100", "data.max_eval_samples=40",
            "data.num_workers=0"]
    with caplog.at_level(logging.INFO, logger="openmae.eval.progress"):
        out = knn_eval(load_config(KnnConfig, overrides=[*data, "model.name=mae_vit_tiny_patch7_28_gray",
                                                         "model.depth=1", "knn.batch_size=32"]))
    assert out["train_samples"] == 100
    lines = [r.getMessage() for r in caplog.records if r.name == "openmae.eval.progress"]
    if terminal:
        assert lines == [] and "kNN features of the train images" in console.getvalue()
        return
    # batches of 32: a line after each but the last of a pass
    found = [re.fullmatch(r"kNN features of the (\w+) images: (\d+) of (\d+) images \((\d+)%\), \d+ images/s, "
                          r"\d+:\d\d:\d\d left", line) for line in lines]
    assert all(found), lines
    assert [(m[1], int(m[2]), int(m[3]), int(m[4])) for m in found] == [
        ("train", 32, 100, 32), ("train", 64, 100, 64), ("train", 96, 100, 96), ("test", 32, 40, 80)]
    assert "kNN features" not in console.getvalue()
    # an evaluation's pass alike (openmae evaluate, a fine-tuning's validation)
    from openmae.data.build import eval_batches
    from openmae.data.config import DataConfig
    from openmae.engine.classifier import evaluate

    caplog.clear()
    cfg = DataConfig(name="fashion-mnist", root=str(datasets), max_eval_samples=40, num_workers=0)
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))
    with caplog.at_level(logging.INFO, logger="openmae.eval.progress"):
        evaluate(linear, eval_batches(cfg, "test", (28, 28), 1, 16, 40), torch.device("cpu"), what="evaluation of the "
                 "test images", total=40)
    assert [re.sub(r", \d+ images/s, .* left$", "", r.getMessage()) for r in caplog.records] == [
        "evaluation of the test images: 16 of 40 images (40%)", "evaluation of the test images: 32 of 40 images (80%)"]
