"""Smoke versions of the evaluation protocols on real Fashion-MNIST: a briefly pretrained encoder must beat
a random-init encoder under kNN, the cached linear probe and fine-tuning at the same budget.
A regression in what the model learns fails here, in CI."""

import pytest

from openmae.config import load_config
from openmae.engine.finetune import FinetuneConfig, finetune
from openmae.engine.knn_eval import KnnConfig, knn_eval
from openmae.engine.linprobe import LinprobeConfig, linprobe
from openmae.engine.logging import read_metrics
from openmae.engine.pretrain import PretrainConfig, pretrain

MODEL = ["model.name=mae_vit_tiny_patch7_28_gray", "model.embed_dim=96", "model.depth=4", "model.num_heads=3",
         "model.decoder_embed_dim=64", "model.decoder_depth=1", "model.decoder_num_heads=2"]
QUIET = ["train.progress=false", "train.tensorboard=false"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, datasets):
    out = tmp_path_factory.mktemp("pretrained")
    pretrain(load_config(PretrainConfig, overrides=MODEL + QUIET + [
        "data.name=fashion-mnist", f"data.root={datasets}", "data.max_samples=12000", "train.epochs=4",
        "train.warmup_epochs=1", "train.batch_size=128", "train.blr=3e-3", "train.log_every_steps=50",
        "pretrain.vis_images=0", f"train.output_dir={out}"]))
    return out / "model-last.pth"


def eval_data(datasets, train: int, test: int) -> list[str]:
    return ["data.name=fashion-mnist", f"data.root={datasets}", f"data.max_samples={train}",
            f"data.max_eval_samples={test}"]


def test_knn_pretrained_beats_random(pretrained, datasets):
    common = eval_data(datasets, 5000, 2000) + ["knn.pooling=mean"]
    ours = knn_eval(load_config(KnnConfig, overrides=common + [f"knn.init={pretrained}"]))["knn_top1"]
    rand = knn_eval(load_config(KnnConfig, overrides=common + MODEL))["knn_top1"]
    assert ours > rand + 2.0, (ours, rand)


def cached_probe(datasets) -> list[str]:
    return eval_data(datasets, 5000, 2000) + QUIET + [
        "linprobe.mode=cached", "linprobe.pooling=mean", "train.epochs=10", "train.warmup_epochs=1",
        "train.batch_size=256", "train.optimizer=adamw", "train.lr=1e-3", "train.betas=[0.9,0.999]"]


def test_cached_linear_probe_pretrained_beats_random(pretrained, datasets, tmp_path):
    common = cached_probe(datasets)
    ours = linprobe(load_config(LinprobeConfig, overrides=common + [f"linprobe.init={pretrained}",
                                                                     f"train.output_dir={tmp_path / 'a'}"]))
    rand = linprobe(load_config(LinprobeConfig, overrides=common + MODEL + [f"train.output_dir={tmp_path / 'b'}"]))
    assert ours["mode"] == "cached"
    assert ours["best_top1"] > rand["best_top1"] + 2.0, (ours["best_top1"], rand["best_top1"])
    assert (tmp_path / "a" / "model-best.pth").is_file() and (tmp_path / "a" / "model-timm.safetensors").is_file()


def test_cached_probe_of_all_blocks(pretrained, datasets, tmp_path):
    """The probe reads the concatenated pooled features of the last 4 blocks (4 x 96 channels)."""
    from openmae.convert.files import load_file

    common = cached_probe(datasets) + ["linprobe.last_blocks=4"]
    ours = linprobe(load_config(LinprobeConfig, overrides=common + [f"linprobe.init={pretrained}",
                                                                     f"train.output_dir={tmp_path / 'a'}"]))
    rand = linprobe(load_config(LinprobeConfig, overrides=common + MODEL + [f"train.output_dir={tmp_path / 'b'}"]))
    head = load_file(tmp_path / "a" / "model-best.pth")["model"]["head.1.weight"]
    assert head.shape == (10, 4 * 96)
    assert ours["best_top1"] > rand["best_top1"] + 2.0, (ours["best_top1"], rand["best_top1"])


def test_finetune_pretrained_beats_scratch(pretrained, datasets, tmp_path):
    common = eval_data(datasets, 2000, 2000) + QUIET + [
        "train.epochs=3", "train.warmup_epochs=1", "train.batch_size=64", "train.blr=2e-3", "data.num_workers=2",
        "finetune.mixup=0", "finetune.cutmix=0", "finetune.auto_augment=", "finetune.reprob=0",
        "finetune.drop_path=0", "train.log_every_steps=10"]
    ours = finetune(load_config(FinetuneConfig, overrides=common + [f"finetune.init={pretrained}",
                                                                     f"train.output_dir={tmp_path / 'a'}"]))
    scratch = finetune(load_config(FinetuneConfig, overrides=common + MODEL + [f"train.output_dir={tmp_path / 'b'}"]))
    assert ours["best_top1"] > scratch["best_top1"] + 2.0, (ours["best_top1"], scratch["best_top1"])


def test_online_linear_probe_trains_only_the_head(pretrained, datasets, tmp_path):
    import torch

    from openmae.convert.files import load_file

    out = linprobe(load_config(LinprobeConfig, overrides=eval_data(datasets, 512, 256) + QUIET + [
        f"linprobe.init={pretrained}", "train.epochs=2", "train.warmup_epochs=1", "train.batch_size=64",
        f"train.output_dir={tmp_path}", "data.num_workers=0", "train.optimizer=adamw", "train.lr=1e-3"]))
    assert out["mode"] == "online" and out["top1"] > 10.0
    probe = load_file(tmp_path / "model-last.pth")["model"]
    mae = load_file(pretrained)["model"]
    for key in ("blocks.0.attn.qkv.weight", "patch_embed.proj.weight", "norm.weight", "cls_token"):
        assert torch.equal(probe[key], mae[key]), key  # the encoder stayed frozen
    assert probe["head.0.running_var"].ne(1).any()  # the BatchNorm head saw the features
    assert not torch.equal(probe["head.1.weight"], torch.zeros_like(probe["head.1.weight"]))


CIFAR_MODEL = ["model.name=mae_vit_tiny_patch4_32", "model.embed_dim=96", "model.depth=4", "model.num_heads=3",
               "model.decoder_embed_dim=64", "model.decoder_depth=1", "model.decoder_num_heads=2"]


def test_cifar10_pretrained_beats_random(tmp_path, datasets):
    """The CIFAR-10 protocol in miniature (RGB JPEGs, 32px, patch 4, the paper's per-patch normalised target): 234
    steps on 10,000 images lift kNN on 2,000 / 1,000 images 7.1 points above the random-init encoder (32.0 / 24.9%
    measured; 3.4 points with raw pixels as the target; 6,000 images fell short of the random encoder)."""
    pretrain(load_config(PretrainConfig, overrides=CIFAR_MODEL + QUIET + ["model.norm_pix_loss=true",
        "data.name=cifar10", f"data.root={datasets}", "data.max_samples=10000", "train.epochs=3",
        "train.warmup_epochs=1", "train.batch_size=128", "train.blr=3e-3", "pretrain.vis_images=0",
        f"train.output_dir={tmp_path / 'pre'}"]))
    ckpt = tmp_path / "pre" / "model-last.pth"
    data = ["data.name=cifar10", f"data.root={datasets}", "data.max_samples=2000", "data.max_eval_samples=1000"]
    knn = [knn_eval(load_config(KnnConfig, overrides=data + ["knn.pooling=mean", *init]))["knn_top1"]
           for init in ([f"knn.init={ckpt}"], CIFAR_MODEL)]
    assert knn[0] > knn[1] + 4.0, knn


def test_imagenet_sample_protocol_reconstructs_held_out_photos(tmp_path, datasets):
    """The ImageNet-sample protocol in miniature (64px, tiny model, 2 epochs on 900 photos): its held-out
    masked-patch error falls well below the same model's at initialisation, and it writes its pictures."""
    import json
    import subprocess
    import sys

    from conftest import REPO

    subprocess.run([sys.executable, str(REPO / "benchmarks" / "imagenet_sample.py"), "--smoke",
                    "--photos", str(datasets / "imagenet-sample"), "--out", str(tmp_path)], check=True, cwd=REPO)
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["train_images"] == 900 and result["heldout_images"] == 100
    assert result["heldout_mse_removed"] < 0.8 * result["heldout_mse_removed_at_init"], result
    assert all((tmp_path / name).stat().st_size > 1000 for name in ("heldout.png", "train.png", "loss.png"))


def test_eval_select_chooses_on_held_out_images_then_tests_once(pretrained, datasets, tmp_path):
    """benchmarks/eval_select.py in miniature: every kNN candidate is scored on the held-out images, the chosen
    setting is the best of them, and the chosen kNN and probe settings are then measured on the test split."""
    import json
    import subprocess
    import sys

    from conftest import REPO

    subprocess.run([sys.executable, str(REPO / "benchmarks" / "eval_select.py"), "--smoke", "--init", str(pretrained),
                    "--data-root", str(datasets), "--out", str(tmp_path), "--finetune-select-epochs", "1",
                    "--finetune-epochs", "1", "--precision", "bf16", "--finetune-recipes",
                    "crop0.5_jitter0.4,ema0.999"], check=True, cwd=REPO / "benchmarks")
    r = json.loads((tmp_path / "results.json").read_text())
    rows = r["knn_search"]
    assert len(rows) == 3 * 4 * 2 * 9 + 2 * 9  # poolings x last 1-4 blocks x standardise x (k, T); pixels
    encoder = [row for row in rows if row["features"] == "encoder"]
    assert r["knn_chosen"] == max(encoder, key=lambda row: row["holdout_top1"])
    probes = {key: v for key, v in r.items() if key.startswith("probe_holdout_")}
    chosen = r["probe_chosen"]
    assert max(probes, key=probes.get) == f"probe_holdout_{chosen['pooling']}_{chosen['schedule']}"
    assert any("data.holdout=" in s for s in r["settings"][max(probes, key=probes.get)])
    assert not any("data.holdout" in s for s in r["settings"]["probe_selected_test"] + r["settings"]["knn_selected_test"])
    assert r["knn_selected_test"] > 50 and r["probe_selected_test"] > 50  # ten classes: chance is 10%
    # fine-tuning recipes: the same rule (held-out images, last epoch), then one run of the chosen recipe
    tuned = {key: v for key, v in r.items() if key.startswith("finetune_holdout1_")}
    assert len(tuned) == 2 and max(tuned, key=tuned.get) == f"finetune_holdout1_{r['finetune_chosen']['recipe']}"
    final_key = f"finetune_selected_test_1ep_{r['finetune_chosen']['recipe']}"
    final = r["settings"][final_key]
    assert all(any("data.holdout=" in s for s in r["settings"][key]) for key in tuned)
    assert not any("data.holdout" in s for s in final) and "train.precision=bf16" in final
    chosen_overrides = r["finetune_chosen"]["overrides"]
    assert final[len(final) - len(chosen_overrides):] == chosen_overrides  # the chosen recipe, applied last
    assert r[final_key] > 30
    assert (tmp_path / "finetune_curves_1ep.png").stat().st_size > 1000
    ema = read_metrics(tmp_path / "finetune_holdout1_ema0.999" / "metrics.jsonl")  # the EMA recipe reached its run
    assert any("live_top1" in row for row in ema)
    bad = subprocess.run([sys.executable, "eval_select.py", "--init", str(pretrained), "--finetune-recipes", "crop9"],
                         capture_output=True, text=True, cwd=REPO / "benchmarks")
    assert bad.returncode == 2 and "unknown ['crop9']" in bad.stderr and "ema0.999" in bad.stderr


def test_ablations_repeat_each_variant_per_seed(datasets, tmp_path):
    """benchmarks/ablations.py with two seeds, in miniature: each seed is its own run (its seed and the asked
    precision reach every step, so the two pretrainings differ; --finetune-set reaches fine-tuning alone), and the
    table gives the mean of the seeds followed by each seed's value."""
    import json
    import subprocess
    import sys

    from conftest import REPO

    subprocess.run([sys.executable, str(REPO / "benchmarks" / "ablations.py"), "--smoke", "--seeds", "0", "1",
                    "--variants", "base", "--precision", "bf16", "--finetune-set", "finetune.color_jitter=0.4",
                    "--data-root", str(datasets), "--out", str(tmp_path)], check=True, cwd=REPO / "benchmarks")
    runs = [json.loads((tmp_path / f"seed{s}" / "results.json").read_text()) for s in (0, 1)]
    for seed, r in enumerate(runs):
        for step in ("base_loss", "base_probe", "base_finetune"):
            assert f"train.seed={seed}" in r["settings"][step] and "train.precision=bf16" in r["settings"][step]
        assert "finetune.color_jitter=0.4" in r["settings"]["base_finetune"]  # fine-tuning only
        assert not any("color_jitter" in s for s in r["settings"]["base_probe"] + r["settings"]["base_loss"])
    assert runs[0]["base_loss"] != runs[1]["base_loss"]
    # probes and fine-tunings are reported at their last epoch (never picked on the test split); the best epoch beside
    for seed, r in enumerate(runs):
        assert r["reported_epoch"] == "last"
        for step in ("base_probe", "base_finetune"):
            evals = [m for m in read_metrics(tmp_path / f"seed{seed}" / step / "metrics.jsonl") if "top1" in m]
            assert r[step] == evals[-1]["top1"] and r["best_epoch_top1"][step] == max(m["top1"] for m in evals)
    row = next(line for line in (tmp_path / "ablations.md").read_text().splitlines() if line.startswith("| base "))
    knn = [runs[0]["base_knn"], runs[1]["base_knn"]]
    assert f"{sum(knn) / 2:.2f} ({knn[0]:.2f} / {knn[1]:.2f})" in row
    assert "top-1 at the last epoch" in (tmp_path / "ablations.md").read_text()
    assert (tmp_path / "mask_ratio.png").stat().st_size > 1000


def test_protocol_results_written_before_the_last_epoch_rule_keep_reporting_the_best(tmp_path):
    """A results file without ``reported_epoch`` (written when protocols reported the best test epoch) goes on
    reporting the best epoch when continued, so it never mixes the two; a script that reports the last epoch alone
    (eval_select, which always did) refuses a file that says it holds best epochs."""
    import json
    import sys

    from conftest import REPO

    sys.path.insert(0, str(REPO / "benchmarks"))
    from protocol import Protocol

    def protocol(out, **kw):
        return Protocol("fashion-mnist", "", out, [], REPO / "configs/pretrain/fashion_mnist.yaml",
                        REPO / "configs/finetune/fashion_mnist.yaml", **kw)

    assert protocol(tmp_path / "new").results["reported_epoch"] == "last"
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "results.json").write_text(json.dumps({"date": "2026-11-26", "probe_mae": 80.0}))
    old = protocol(tmp_path / "old")
    assert old.results["reported_epoch"] == "best"
    assert old.classifier_top1("probe_x", lambda: {"top1": 79.0, "best_top1": 81.0})() == 81.0
    assert protocol(tmp_path / "new").classifier_top1("probe_x", lambda: {"top1": 79.0, "best_top1": 81.0})() == 79.0
    old.save()
    with pytest.raises(ValueError, match="reports the best epoch, this protocol the last"):
        protocol(tmp_path / "old", reported_epoch="last")


def test_plot_epochs_reports_each_runs_last_and_best_epoch(tmp_path, capsys):
    """benchmarks/plot_epochs.py: the printed table reads the last and the best evaluated epoch of each run (step
    records without top1 are skipped), the figure is written, and a malformed or missing run is refused by name."""
    import json
    import sys

    from conftest import REPO

    sys.path.insert(0, str(REPO / "benchmarks"))
    from plot_epochs import main

    runs = {"a": [70.0, 80.5, 79.25], "b": [60.0, 65.0]}
    for name, accs in runs.items():
        (tmp_path / name).mkdir()
        lines = [{"step": 10, "loss": 1.0}] + [{"step": 20 * e, "epoch": e, "top1": t} for e, t in enumerate(accs, 1)]
        (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    out = tmp_path / "fig" / "curves.png"
    main([f"run a={tmp_path / 'a'}", f"b={tmp_path / 'b' / 'metrics.jsonl'}", "-o", str(out)])
    table = capsys.readouterr().out
    assert "| run a | 3 | 79.25 | 80.50 (2) |" in table
    assert "| b | 2 | 65.00 | 65.00 (2) |" in table
    assert out.stat().st_size > 1000
    with pytest.raises(SystemExit, match="is not LABEL=PATH"):
        main([str(tmp_path / "a"), "-o", str(out)])
    with pytest.raises(SystemExit, match="no metrics file at"):
        main([f"c={tmp_path / 'missing'}", "-o", str(out)])
    (tmp_path / "pretrain").mkdir()
    (tmp_path / "pretrain" / "metrics.jsonl").write_text(json.dumps({"step": 10, "loss": 1.0}) + "\n")
    with pytest.raises(SystemExit, match="run 'p' has no evaluated epochs"):
        main([f"p={tmp_path / 'pretrain'}", "-o", str(out)])
