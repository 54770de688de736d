"""torchrun with the gloo backend on CPU: 2 processes equal 1 process over the same global batch."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import torchrun, weights

ARGS = ["model.name=mae_vit_debug_patch4_32", "data.name=cifar10", "data.max_samples=64", "data.num_workers=0",
        "train.epochs=2", "train.warmup_epochs=1", "train.log_every_steps=1", "train.progress=false",
        "train.tensorboard=false", "train.blr=1.5e-3", "pretrain.vis_images=4",
        # a kNN monitor whose images do not split evenly between 2 ranks (each evaluates its part)
        "pretrain.knn_every_epochs=1", "pretrain.knn_train_samples=101", "pretrain.knn_eval_samples=37",
        # and the held-out reconstruction loss of 37 test images
        "pretrain.eval_every_epochs=1", "pretrain.eval_samples=37"]


def monitored(run: Path) -> list[tuple[float, float, float, float]]:
    """The kNN monitor's (top-1, top-5) and the held-out eval_loss / eval_psnr at every epoch, and the pictures of
    the last were written."""
    assert (run / "pictures" / "reconstruction-epoch0002.png").is_file()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(row["knn_top1"], row["knn_top5"], row["eval_loss"], row["eval_psnr"]) for row in rows if "knn_top1" in row]


def same_monitor(a: Path, b: Path) -> None:
    """The same kNN accuracies, to one of the 37 images, and held-out losses (the two runs' weights differ by float32
    rounding)."""
    seen, reference = monitored(a), monitored(b)
    assert len(seen) == len(reference) == 2
    for got, want in zip(seen, reference):
        assert got[:2] == pytest.approx(want[:2], abs=100 / 37 + 1e-9), (seen, reference)
        assert got[2:] == pytest.approx(want[2:], rel=1e-4), (seen, reference)
    assert seen[0][2] != seen[1][2]  # measured at each epoch


def launch(nproc: int, out: Path, data_root: Path, batch: int, *extra: str) -> None:
    proc = torchrun("-m", "openmae", "pretrain", f"--data-root={data_root}", f"-o={out}", f"train.batch_size={batch}",
                    *ARGS, *extra, nproc=nproc, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, datasets) -> Path:
    """The reference both tests compare with: one process over the global batch of 16."""
    out = tmp_path_factory.mktemp("distributed") / "one"
    launch(1, out, datasets, 16)
    return out


def test_two_process_gloo_equals_one_process(one_process, tmp_path, datasets):
    launch(2, tmp_path / "two", datasets, 8)
    a, b = weights(one_process), weights(tmp_path / "two")
    # same samples, masks and augmentations per step; only the reduction order of the gradient sum differs,
    # so the weights agree to float32 rounding accumulated over 8 AdamW steps
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=2e-5)
    logs = [(run / "metrics.jsonl").read_text().count("\n") for run in (one_process, tmp_path / "two")]
    assert logs[0] == logs[1]  # rank 0 alone writes the log
    same_monitor(tmp_path / "two", one_process)


def test_two_process_fsdp2_equals_one_process(one_process, tmp_path, datasets):
    """With the monitor's forwards (the kNN's features, the pictures' reconstructions) on every rank: under FSDP a
    forward gathers each block's weights from all ranks, and the job hung when rank 0 alone ran them."""
    launch(2, tmp_path / "fsdp", datasets, 8, "train.distributed=fsdp")
    a, b = weights(one_process), weights(tmp_path / "fsdp")
    assert a.keys() == b.keys()  # full (unsharded) state dict in the checkpoint, official key names
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=2e-5)
    same_monitor(tmp_path / "fsdp", one_process)


def test_pretraining_with_a_frozen_encoder_part_by_two_ranks_under_fsdp_equals_one_process(tmp_path, datasets):
    """pretrain.tune_blocks=1 under FSDP2: the frozen blocks (sharded beside trained ones) keep the starting weights
    bit for bit, and the rest trains as one process trains it, to float32 rounding."""
    import openmae

    torch.manual_seed(0)
    mae = openmae.create_model("mae_vit_debug_patch4_32")
    init = tmp_path / "init.pth"
    torch.save({"model": mae.state_dict(), "model_config": mae.cfg.to_dict()}, init)
    extra = ["model.name=auto", f"pretrain.init={init}", "pretrain.tune_blocks=1"]
    launch(1, tmp_path / "one", datasets, 16, *extra)
    launch(2, tmp_path / "two", datasets, 8, *extra, "train.distributed=fsdp")
    one, two = weights(tmp_path / "one"), weights(tmp_path / "two")
    start = mae.state_dict()
    frozen = [k for k in one if k.startswith(("patch_embed.", "blocks.0.")) or k == "cls_token"]
    assert len(frozen) == 15 and all(torch.equal(two[k], start[k]) and torch.equal(one[k], start[k]) for k in frozen)
    assert not torch.equal(two["blocks.1.mlp.fc1.weight"], start["blocks.1.mlp.fc1.weight"])
    for k, v in one.items():
        torch.testing.assert_close(two[k], v, rtol=1e-4, atol=2e-5, msg=lambda m, k=k: f"{k}: {m}")


LEAVES_THE_GROUP = """
import json, os, sys
from pathlib import Path
import torch.distributed as dist
from openmae.config import load_config
from openmae.engine.pretrain import PretrainConfig, pretrain

root, out = sys.argv[1], Path(sys.argv[2])
settings = ["model.name=mae_vit_debug_patch4_32", f"data.root={root}", "data.num_workers=0", "train.epochs=1",
            "train.warmup_epochs=0", "train.batch_size=8", "train.progress=false", "train.tensorboard=false",
            "pretrain.vis_images=0"]
seen = {}
for case, data in (("trained", ["data.name=cifar10", "data.max_samples=16"]),
                   ("failed", ["data.name=folder", f"data.path={out / 'missing'}"]),
                   ("again", ["data.name=cifar10", "data.max_samples=16"])):
    where = out / ("trained" if case == "again" else case)  # again: a new run over the trained one, refused
    try:
        pretrain(load_config(PretrainConfig, overrides=[*settings, *data, f"train.output_dir={where}"]))
        error = ""
    except Exception as err:
        error = f"{type(err).__name__}: {err}"
    seen[case] = {"error": error, "in_group": dist.is_initialized()}
(out / f"rank{os.environ['RANK']}.json").write_text(json.dumps(seen))
"""


def test_a_run_under_torchrun_leaves_the_process_group_trained_or_failed(tmp_path, datasets):
    """Each rank of a torchrun job leaves the gloo group when its run ends, trained or stopped by an error (here a
    data folder that does not exist): a process that exits with the group still up is aborted now and then by gloo
    (SIGABRT at exit), which would bury the run's own error under a crash report. The second run of the script (as
    one that pretrains, then fine-tunes) joins a group of its own: it hung on the first group's keys in the store.
    A third, started over the first without --resume, is refused on both ranks alike."""
    import json

    script = tmp_path / "leaves.py"
    script.write_text(LEAVES_THE_GROUP)
    proc = torchrun(str(script), str(datasets), str(tmp_path), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in range(2):
        seen = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert seen["trained"] == {"error": "", "in_group": False}, seen
        assert seen["failed"]["in_group"] is False and seen["failed"]["error"].startswith("FileNotFoundError: image folder")
        assert seen["failed"]["error"].endswith("missing does not exist"), seen
        # rank 0's view of the folder decides for both (rank 1 writes no run files): both refuse, none waits
        assert seen["again"]["in_group"] is False and "trained already holds a run" in seen["again"]["error"], seen


def test_the_torchrun_helper_refuses_a_script_that_leaves_its_group_up(tmp_path):
    script = tmp_path / "stays.py"
    script.write_text("import torch.distributed as dist\ndist.init_process_group('gloo')\n")
    with pytest.raises(AssertionError, match="never calls dist.destroy_process_group"):
        torchrun(str(script))


SPLIT_EVALUATION = """
import json, os, sys, functools
from pathlib import Path
import torch
import torch.distributed as dist
from torch import nn
from openmae.data.loader import Batch
from openmae.engine.classifier import evaluate
from openmae.engine.distributed import gather_rows, gather_stacked, init_distributed, share_of
from openmae.eval.knn import knn_accuracy, knn_predict

info = init_distributed("cpu")
out = Path(sys.argv[1])
g = torch.Generator().manual_seed(0)
train, train_labels = torch.randn(101, 16, generator=g), torch.randint(0, 7, (101,), generator=g)
test, test_labels = torch.randn(37, 16, generator=g), torch.randint(0, 7, (37,), generator=g)
seen = {}
# knn over every training feature against knn over this rank's part, merged
index, keep = share_of(len(train), info)
mine = torch.from_numpy(index[keep])
for k in (1, 20, 60):  # 60: more than a rank's part (51 and 50)
    whole = knn_predict(train, train_labels, test, 7, k=k, chunk=16)
    split = knn_predict(train[mine], train_labels[mine], test, 7, k=k, chunk=16,
                        gather=functools.partial(gather_stacked, info=info))
    seen[f"knn{k}"] = [(whole - split).abs().max().item(), bool((whole.argmax(1) == split.argmax(1)).all())]
# every item's row back in order, the repeats dropped
index, keep = share_of(len(test), info)
seen["rows"] = bool(torch.equal(gather_rows(test[torch.from_numpy(index)], len(test), info), test))
seen["parts"] = [len(index), int(keep.sum())]
# a classifier's metrics from this rank's part equal those of all the images
torch.manual_seed(1)  # the same classifier on every rank
model = nn.Linear(16, 7)
def batches(feats, labels):
    return [Batch(feats[i : i + 8], labels[i : i + 8], labels[i : i + 8], 0) for i in range(0, len(feats), 8)]
part = torch.from_numpy(index)
whole = evaluate(model, batches(test, test_labels), torch.device("cpu"), confusion=True)
split = evaluate(model, batches(test[part], test_labels[part]), torch.device("cpu"), confusion=True,
                 gather=functools.partial(gather_rows, count=len(test), info=info))
seen["evaluate"] = [whole, split]
# several classes an image: rows (N, 5) of 0 / 1 merged alike
rows, test_rows = (torch.rand(101, 5, generator=g) < 0.3).float(), (torch.rand(37, 5, generator=g) < 0.3).float()
for k in (1, 60):
    whole = knn_predict(train, rows, test, 5, k=k, chunk=16)
    split = knn_predict(train[mine], rows[mine], test, 5, k=k, chunk=16,
                        gather=functools.partial(gather_stacked, info=info))
    seen[f"rows_knn{k}"] = (whole - split).abs().max().item()
model = nn.Linear(16, 5)
whole = evaluate(model, batches(test, test_rows), torch.device("cpu"), confusion=True)
split = evaluate(model, batches(test[part], test_rows[part]), torch.device("cpu"), confusion=True,
                 gather=functools.partial(gather_rows, count=len(test), info=info))
seen["rows_evaluate"] = [whole, split]
# some labels unknown (nan: data.uncertain_label=ignore); k=1 leaves some classes known to no neighbour
nan = float("nan")
unsure = rows.masked_fill(torch.rand(101, 5, generator=g) < 0.3, nan)
test_unsure = test_rows.masked_fill(torch.rand(37, 5, generator=g) < 0.2, nan)
for k in (1, 60):
    whole = knn_accuracy(train, unsure, test, test_unsure, 5, k=k)
    split = knn_accuracy(train[mine], unsure[mine], test, test_unsure, 5, k=k,
                         gather=functools.partial(gather_stacked, info=info))
    seen[f"unknown_knn{k}"] = [whole, split]
whole = evaluate(model, batches(test, test_unsure), torch.device("cpu"), confusion=True)
split = evaluate(model, batches(test[part], test_unsure[part]), torch.device("cpu"), confusion=True,
                 gather=functools.partial(gather_rows, count=len(test), info=info))
seen["unknown_evaluate"] = [whole, split]
# an MAE's reconstruction errors: each rank its part, every image masked by its place among all
import numpy as np
import openmae
from openmae.eval.reconstruction_error import reconstruction_errors
torch.manual_seed(2)
mae = openmae.create_model("mae_vit_debug_patch4_32")
imgs = torch.randn(37, 3, 32, 32, generator=g)
def image_batches(x):
    return [Batch(x[i : i + 8], torch.zeros(len(x[i : i + 8])), torch.zeros(0), 0) for i in range(0, len(x), 8)]
stats = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
whole = reconstruction_errors(mae, image_batches(imgs), np.arange(37), 0.75, stats)
split = reconstruction_errors(mae, image_batches(imgs[part]), index, 0.75, stats,
                              gather=functools.partial(gather_rows, count=37, info=info))
seen["reconstruction"] = [((split.loss - whole.loss) / whole.loss).abs().max().item(),
                          ((split.psnr - whole.psnr) / whole.psnr).abs().max().item(), len(split.loss),
                          max(((getattr(split, k) - getattr(whole, k)) / getattr(whole, k)).abs().max().item()
                              for k in ("pixel_loss", "inpainting_loss"))]
(out / f"rank{info.rank}.json").write_text(json.dumps(seen))
dist.destroy_process_group()
"""


def test_an_evaluation_split_between_ranks_equals_one_over_all_the_images(tmp_path):
    """Under torchrun every rank evaluates its part of the images (``share_of``: 37 items over 2 ranks are 19 each,
    one a repeat that evens the parts) and the results are gathered: the kNN's neighbours found in each rank's part of
    the training features and merged score as over all of them (k above a part's size too), every item's row comes
    back in its place, and a classifier's top-1 / top-5 / loss / confusion equal those over all the images; so do
    kNN scores and a classifier's measures of images of several classes each (rows of 0 / 1), some of whose labels
    are unknown (nan); and an MAE's reconstruction error of each image (masked by its place among all)."""
    import json

    script = tmp_path / "split.py"
    script.write_text(SPLIT_EVALUATION)
    proc = torchrun(str(script), str(tmp_path), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in range(2):
        seen = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for k in (1, 20, 60):
            assert seen[f"knn{k}"][0] < 1e-5 and seen[f"knn{k}"][1], (k, seen[f"knn{k}"])
        assert seen["rows"] and seen["parts"] == [19, 19 - rank]
        whole, split = seen["evaluate"]
        assert whole["confusion"] == split["confusion"] and sum(map(sum, split["confusion"])) == 37
        assert (whole["top1"], whole["top5"]) == (split["top1"], split["top5"])
        assert split["eval_loss"] == pytest.approx(whole["eval_loss"], rel=1e-12)
        assert split["ece"] == pytest.approx(whole["ece"], rel=1e-12) and split["calibration"] == whole["calibration"]
        assert split["temperature"] == whole["temperature"]  # fitted on all the images' NLL, gathered
        assert seen["rows_knn1"] < 1e-5 and seen["rows_knn60"] < 1e-5
        rounded = lambda values: [None if v is None or v != v else round(v, 9) for v in values]  # nan: None
        for name in ("rows_evaluate", "unknown_evaluate"):
            whole, split = seen[name]
            assert whole["per_class_images"] == split["per_class_images"] and sum(split["per_class_images"]) > 0
            assert split.keys() == whole.keys() and "mean_ap" in whole
            assert np.isfinite(whole["mean_ap"]) and np.isfinite(whole["eval_loss"])
            for key, value in whole.items():
                if isinstance(value, dict):  # the calibration bins: each image's probability float32 (batched
                    for part, numbers in value.items():  # otherwise on a rank: to float32's precision)
                        np.testing.assert_allclose(split[key][part], numbers, rtol=1e-6, equal_nan=True)
                elif isinstance(value, list):
                    assert rounded(split[key]) == rounded(value), (name, key)
                else:
                    assert split[key] == pytest.approx(value, rel=1e-12, nan_ok=True), (name, key)
        for k in (1, 60):
            whole, split = seen[f"unknown_knn{k}"]
            assert np.isfinite(whole["knn_mean_ap"]) and split == pytest.approx(whole, rel=1e-6, nan_ok=True), k
        loss_gap, psnr_gap, images, inpainting_gap = seen["reconstruction"]
        assert loss_gap < 1e-5 and psnr_gap < 1e-5 and inpainting_gap < 1e-5 and images == 37


CLASSIFIER = ["model.name=mae_vit_debug_patch4_32", "data.name=cifar10", "data.max_samples=64",
              "data.max_eval_samples=37", "data.num_workers=0", "train.epochs=2", "train.warmup_epochs=1",
              "train.log_every_steps=1", "train.progress=false", "train.tensorboard=false"]
FINETUNE = ["finetune.mixup=0", "finetune.cutmix=0", "finetune.auto_augment=", "finetune.reprob=0"]


def classify(command: str, nproc: int, out: Path, data_root: Path, *extra: str) -> dict:
    """A run of ``openmae <command>`` over a global batch of 16; its model-best.pth."""
    proc = torchrun("-m", "openmae", command, f"--data-root={data_root}", f"-o={out}",
                    f"train.batch_size={16 // nproc}", *CLASSIFIER, *extra, nproc=nproc, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    from openmae.convert.files import load_file

    return load_file(out / "model-best.pth")


def test_a_classifier_fine_tuned_by_two_ranks_under_fsdp_is_evaluated_and_kept_as_by_one(tmp_path, datasets):
    """Each rank evaluates its part of the 37 test images; the metrics are those of all, and the main rank keeps the
    best weights whole. Under FSDP the job hung when rank 0 alone evaluated (a forward gathers each block's weights
    from all ranks)."""
    extra = ["train.distributed=fsdp", *FINETUNE]
    one = classify("finetune", 1, tmp_path / "one", datasets, *extra)
    two = classify("finetune", 2, tmp_path / "two", datasets, *extra)
    assert one["epoch"] == two["epoch"]
    for name in ("top1", "top5"):  # to one of the 37 images: the weights differ by float32 rounding
        assert two["metrics"][name] == pytest.approx(one["metrics"][name], abs=100 / 37 + 1e-9)
    assert two["metrics"]["eval_loss"] == pytest.approx(one["metrics"]["eval_loss"], rel=1e-3)
    assert one["model"].keys() == two["model"].keys()
    for k, v in one["model"].items():
        assert type(two["model"][k]) is torch.Tensor  # whole tensors (FSDP holds a part of each on every rank)
        torch.testing.assert_close(two["model"][k], v, rtol=1e-3, atol=1e-4)
    assert (tmp_path / "two" / "model-timm.safetensors").is_file()


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_partial_fine_tuning_by_two_ranks_keeps_the_frozen_weights_and_trains_as_one_process(tmp_path, datasets,
                                                                                            strategy):
    """finetune.tune_blocks=1 under torchrun: the frozen part (embeddings, block 0) stays the pretrained weights bit
    for bit on every rank (DDP leaves parameters without gradients alone, FSDP2 shards frozen and trained ones side
    by side), and the trained ones end as one process trains them, to float32 rounding."""
    import openmae

    torch.manual_seed(0)
    mae = openmae.create_model("mae_vit_debug_patch4_32")
    init = tmp_path / "init.pth"
    torch.save({"model": mae.state_dict(), "model_config": mae.cfg.to_dict()}, init)
    # SGD: AdamW scales each update to about lr whatever the gradient's size, so that the float32 rounding of
    # near-zero gradients (summed in another order over two ranks) would move those weights by up to lr a step
    extra = [f"train.distributed={strategy}", *FINETUNE, f"finetune.init={init}", "finetune.tune_blocks=1",
             "train.optimizer=sgd", "train.blr=0.05", "finetune.drop_path=0"]  # each rank draws its own drops
    from openmae.convert.files import load_file

    for n in (1, 2):  # the last weights (model-best.pth's epoch may differ by one image's top-1)
        classify("finetune", n, tmp_path / f"{n}", datasets, *extra)
    one, two = (load_file(tmp_path / f"{n}" / "model-timm.safetensors")["model"] for n in (1, 2))
    pretrained = mae.state_dict()
    frozen = [k for k in one if k.startswith(("patch_embed.", "blocks.0.")) or k in ("cls_token", "pos_embed")]
    assert len(frozen) == 16 and all(torch.equal(two[k], pretrained[k]) for k in frozen)
    assert not torch.equal(two["blocks.1.mlp.fc1.weight"], pretrained["blocks.1.mlp.fc1.weight"])
    for k, v in one.items():
        torch.testing.assert_close(two[k], v, rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")


def test_a_cached_probe_of_two_ranks_computes_and_evaluates_the_features_of_all_the_images(tmp_path, datasets,
                                                                                           caplog):
    """Each rank computes the features of its part of the images (gathered: every rank trains on all of them) and
    evaluates its part of the 37 test images. The features the main rank keeps (linprobe.feature_cache) are those one
    process computes, and one process reads them; the best weights, evaluated in one process on features computed
    there, score what the two ranks measured. (Its BatchNorm head sees 8 features a rank, not 16, so it trains otherwise than
    one process.)"""
    from openmae.config import load_config
    from openmae.convert.files import load_file
    from openmae.engine.linprobe import LinprobeConfig, LinprobeTask

    extra = ["linprobe.mode=cached", "linprobe.last_blocks=2", "train.seed=3", "train.precision=fp32",
             f"linprobe.feature_cache={tmp_path / 'kept'}"]
    best = classify("linprobe", 2, tmp_path / "two", datasets, *extra)
    assert len(list((tmp_path / "kept").glob("*.pt"))) == 2  # the main rank kept the train and eval features
    cfg = load_config(LinprobeConfig, overrides=[*CLASSIFIER, *extra, f"data.root={datasets}",
                                                  f"train.output_dir={tmp_path / 'one'}"])
    torch.manual_seed(3)  # the encoder the ranks drew (train.seed): one process reads the features they kept
    with caplog.at_level("INFO", logger="openmae.features"):
        task = LinprobeTask(cfg, torch.device("cpu"))
    assert caplog.text.count("kept by an earlier probe") == 2, caplog.text
    computed = task._compute_features(cfg.data.train_split, task.train_source)
    torch.testing.assert_close(task.train_feats[0], computed[0], rtol=0, atol=1e-5)
    assert torch.equal(task.train_feats[1], computed[1]) and len(computed[1]) == 64
    task.classifier.load_state_dict(load_file(tmp_path / "two" / "model-best.pth")["model"])  # its encoder too
    task.eval_feats = task._compute_features(cfg.data.eval_split, task.eval_source)
    mine = task.evaluate()
    assert (mine["top1"], mine["top5"]) == (best["metrics"]["top1"], best["metrics"]["top5"])
    assert mine["eval_loss"] == pytest.approx(best["metrics"]["eval_loss"], rel=1e-9)  # fp32: the same features


@pytest.mark.parametrize("standardized", [False, True], ids=["cosine", "standardized"])
def test_openmae_knn_under_torchrun_splits_the_images_and_scores_as_one_process(standardized, tmp_path, datasets):
    """`torchrun ... -m openmae knn`: each rank computes the features of its part of the images (101 training and 37
    test images: parts evened by a repeat), finds the nearest among its part of the training features, and the
    standardisation takes the mean and std of all of them; rank 0 prints what one process does. It was refused."""
    from openmae.config import load_config
    from openmae.engine.knn_eval import knn_eval
    from openmae.engine.task_config import KnnConfig

    args = ["model.name=mae_vit_debug_patch4_32", "data.name=cifar10", "data.max_samples=101",
            "data.max_eval_samples=37", "data.num_workers=0", "knn.batch_size=16", "knn.k=10",
            f"knn.standardize={str(standardized).lower()}"]
    proc = torchrun("-m", "openmae", "knn", f"--data-root={datasets}", *args, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads(proc.stdout.strip().splitlines()[-1])
    one = knn_eval(load_config(KnnConfig, overrides=[*args, f"data.root={datasets}"]))
    assert (two["train_samples"], two["eval_samples"]) == (101, 37)
    assert (two["knn_top1"], two["knn_top5"]) == (one["knn_top1"], one["knn_top5"])


def test_openmae_evaluate_under_torchrun_measures_each_ranks_part_and_reports_them_all(tmp_path, datasets):
    """`torchrun ... -m openmae evaluate` (flip test-time augmentation, 37 test images): each rank measures its part;
    rank 0 prints and writes the top-1 / top-5, per-class accuracy and confusion matrix one process gives. It was
    refused."""
    from test_finetune import tiny_finetune

    from openmae.config import load_config
    from openmae.engine.evaluate import EvaluateConfig, run_evaluate
    from openmae.engine.finetune import finetune

    finetune(tiny_finetune(tmp_path / "run", datasets, "train.epochs=1", "train.warmup_epochs=0"))
    args = ["data.name=cifar10", "data.max_eval_samples=37", "data.num_workers=0", "evaluate.tta=flip",
            "evaluate.batch_size=8"]
    proc = torchrun("-m", "openmae", "evaluate", "--checkpoint", str(tmp_path / "run" / "model-best.pth"),
                    f"--data-root={datasets}", *args, "-o", str(tmp_path / "two.json"), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((tmp_path / "two.json").read_text())
    one = run_evaluate(load_config(EvaluateConfig, overrides=[f"evaluate.init={tmp_path / 'run' / 'model-best.pth'}",
                                                              f"data.root={datasets}", *args]))
    assert two["samples"] == one["samples"] == 37 and sum(map(sum, two["confusion"])) == 37
    for key in ("top1", "top5", "confusion", "per_class_top1"):
        assert two[key] == one[key], key
    assert two["eval_loss"] == pytest.approx(one["eval_loss"], rel=1e-6)


def test_openmae_evaluate_of_a_pretrained_mae_under_torchrun_equals_one_process(tmp_path, datasets):
    """`torchrun ... -m openmae evaluate` of a pretrained MAE: each rank reconstructs its part of 37 test images, each
    masked by its place among all; rank 0 writes the loss and PSNR one process gives, each image's row once, and the
    worst images' picture."""
    import csv

    import openmae
    from openmae.config import load_config
    from openmae.engine.evaluate import EvaluateConfig, run_evaluate

    torch.manual_seed(0)
    mae = openmae.create_model("mae_vit_debug_patch4_32", norm_pix_loss=True)
    torch.save({"model": mae.state_dict(), "model_config": mae.cfg.to_dict()}, tmp_path / "mae.pth")
    reference = tmp_path / "reference"  # each image's farthest patch from these photos' patches, too
    reference.mkdir()
    for photo in sorted((datasets / "imagenet-sample").glob("*.JPEG"))[:11]:  # read 6 a rank, one of them twice
        (reference / photo.name).write_bytes(photo.read_bytes())
    args = ["data.name=cifar10", "data.max_eval_samples=37", "data.num_workers=0", "evaluate.batch_size=8",
            "evaluate.mask_ratio=0.6", f"evaluate.reference_images={reference}"]
    proc = torchrun("-m", "openmae", "evaluate", "--checkpoint", str(tmp_path / "mae.pth"), f"--data-root={datasets}",
                    *args, "-o", str(tmp_path / "two.json"), "--predictions", str(tmp_path / "two.csv"), "--plot",
                    str(tmp_path / "worst.png"), f"evaluate.save_reference={tmp_path / 'kept.safetensors'}",
                    timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "reading the patch tokens of 11 reference images" in proc.stderr
    assert "6 on each of 2 processes" in proc.stderr  # the reference's reading shared
    two = json.loads((tmp_path / "two.json").read_text())
    one = run_evaluate(load_config(EvaluateConfig, overrides=[f"evaluate.init={tmp_path / 'mae.pth'}",
                                                              f"data.root={datasets}", *args,
                                                              f"evaluate.predictions={tmp_path / 'one.csv'}",
                                                              f"evaluate.save_reference={tmp_path / 'one.safetensors'}"]))
    assert two["samples"] == one["samples"] == 37 and two["mask_ratio"] == 0.6 and two["norm_pix_loss"]
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5) and two["psnr"] == pytest.approx(one["psnr"], rel=1e-5)
    rows = list(csv.DictReader((tmp_path / "two.csv").open()))
    assert len(rows) == 37 and len({r["image"] for r in rows}) == 37
    ones = list(csv.DictReader((tmp_path / "one.csv").open()))  # the farthest patches, image by image, in order
    assert [r["image"] for r in rows] == [r["image"] for r in ones]
    np.testing.assert_allclose([float(r["farthest_patch"]) for r in rows], [float(r["farthest_patch"]) for r in ones],
                               rtol=1e-5, atol=1e-6)
    assert two["farthest_patch"] == pytest.approx(one["farthest_patch"], rel=1e-5) and one["farthest_patch"] > 0
    assert (tmp_path / "worst.png").stat().st_size > 1000
    from safetensors.torch import load_file as read_tensors  # the reference kept by rank 0: the whole, as one process's

    kept, alone = read_tensors(tmp_path / "kept.safetensors"), read_tensors(tmp_path / "one.safetensors")
    assert kept["tokens"].shape == (11 * 64, 64) and torch.equal(kept["image"], alone["image"])
    torch.testing.assert_close(kept["tokens"], alone["tokens"], rtol=1e-5, atol=1e-5)


def test_defect_masks_under_torchrun_score_the_maps_one_process_scores(tmp_path, datasets):
    """`evaluate.defect_masks` under torchrun: each rank computes the error and distance maps (in 4 views of the
    patch grid, each view's reference bank gathered from both ranks' parts) of its part of 7 test images (one read
    twice and dropped), every rank holds them all in order, and the pixel ROC-AUC and PRO are one process's (each
    image's masks drawn from its place, whatever rank reads it)."""
    from PIL import Image

    import openmae
    from openmae.config import load_config
    from openmae.engine.evaluate import EvaluateConfig, run_evaluate

    torch.manual_seed(0)
    mae = openmae.create_model("mae_vit_debug_patch4_32")
    torch.save({"model": mae.state_dict(), "model_config": mae.cfg.to_dict()}, tmp_path / "mae.pth")
    photos = sorted((datasets / "imagenet-sample").glob("*.JPEG"))
    part = tmp_path / "part"
    for folder, chosen in {"train/good": photos[:4], "test/good": photos[2:5], "test/crack": photos[300:304]}.items():
        (part / folder).mkdir(parents=True)
        for i, photo in enumerate(chosen):
            (part / folder / photo.name).write_bytes(photo.read_bytes())
            if folder == "test/crack":  # a square in a different place in each
                (part / "ground_truth" / "crack").mkdir(parents=True, exist_ok=True)
                mask = Image.new("L", (48, 48))
                mask.paste(255, (8 * i, 4 * i, 8 * i + 16, 4 * i + 24))
                mask.save(part / "ground_truth" / "crack" / f"{photo.stem}_mask.png")
    args = ["data.name=imagefolder", f"data.path={part}", "data.num_workers=0", "evaluate.batch_size=2",
            "evaluate.normal_class=good", f"evaluate.reference_images={part / 'train/good'}",
            f"evaluate.defect_masks={part / 'ground_truth'}", "evaluate.map_views=4"]
    proc = torchrun("-m", "openmae", "evaluate", "--checkpoint", str(tmp_path / "mae.pth"), *args, "-o",
                    str(tmp_path / "two.json"), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((tmp_path / "two.json").read_text())
    one = run_evaluate(load_config(EvaluateConfig, overrides=[f"evaluate.init={tmp_path / 'mae.pth'}", *args[:3],
                                                              "evaluate.batch_size=7", *args[4:]]))
    assert two["samples"] == one["samples"] == 7
    for key in ("pixel_auc_error_map", "pro_error_map", "pixel_auc_distance_map", "pro_distance_map"):
        assert two[key] == pytest.approx(one[key], abs=1e-4), key
        assert 0 < one[key] < 100, key  # neither all above nor all below: an order to get wrong
