"""torchrun with the gloo backend on CPU: 2 processes equal 1 process over the same global batch."""

from pathlib import Path

import pytest
import torch
from helpers import torchrun, weights

ARGS = ["model.name=mae_vit_debug_patch4_32", "data.name=cifar10", "data.max_samples=64", "data.num_workers=0",
        "train.epochs=2", "train.warmup_epochs=1", "train.log_every_steps=1", "train.progress=false",
        "train.tensorboard=false", "pretrain.vis_images=0", "train.blr=1.5e-3"]


def launch(nproc: int, out: Path, data_root: Path, batch: int, *extra: str) -> None:
    proc = torchrun("-m", "openmae", "pretrain", f"--data-root={data_root}", f"-o={out}", f"train.batch_size={batch}",
                    *ARGS, *extra, nproc=nproc, timeout=600)
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


def test_two_process_fsdp2_equals_one_process(one_process, tmp_path, datasets):
    launch(2, tmp_path / "fsdp", datasets, 8, "train.distributed=fsdp")
    a, b = weights(one_process), weights(tmp_path / "fsdp")
    assert a.keys() == b.keys()  # full (unsharded) state dict in the checkpoint, official key names
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=2e-5)


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
