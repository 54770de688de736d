"""Small builders shared by the tests."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import torch

from openmae.config import load_config
from openmae.convert.files import load_file
from openmae.data.loader import Batch
from openmae.engine.pretrain import PretrainConfig

REPO = Path(__file__).resolve().parents[1]


def tiny_pretrain(out: Path, data_root: Path, *extra: str) -> PretrainConfig:
    """Debug-sized MAE on 64 real CIFAR-10 images, 4 steps of 16 an epoch, logging every step."""
    return load_config(PretrainConfig, overrides=[
        "model.name=mae_vit_debug_patch4_32", "data.name=cifar10", f"data.root={data_root}", "data.max_samples=64",
        "data.num_workers=0", "train.epochs=3", "train.warmup_epochs=1", "train.batch_size=16",
        "train.log_every_steps=1", "train.progress=false", "train.tensorboard=false", "pretrain.vis_images=0",
        f"train.output_dir={out}", "train.blr=1.5e-3", *extra,
    ])


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "model-last.pth")["model"]


def torchrun(*args: str, nproc: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --standalone --nproc_per_node=<nproc> <args>`` (one thread a rank). Past
    ``timeout`` torchrun is sent SIGTERM, which it passes on to its ranks (each in a session of its own, out of reach
    of a signal to torchrun's group) before it exits, and TimeoutExpired is raised: ``subprocess.run`` would SIGKILL
    torchrun alone, and its ranks, hung in a collective, would stay behind (holding the output pipes open). A script
    that joins a process group itself must leave it: gloo in torch 2.14 aborts now and then at the exit of a process
    whose group is still up (about one run in three), which fails a test whose ranks all did their work."""
    code = Path(args[0]).read_text() if args and args[0].endswith(".py") else ""
    if "init_process_group" in code and "destroy_process_group" not in code:
        raise AssertionError(f"{args[0]} joins a process group but never calls dist.destroy_process_group(): end it "
                             "with one, or the test fails now and then with the ranks' work done")
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.communicate(timeout=60)  # torchrun's own shutdown: 30 s before it SIGKILLs its ranks
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_cli(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "openmae", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=REPO)


def call_cli(*args: str) -> subprocess.CompletedProcess:
    """``openmae <args>`` run in this process, for what the CLI refuses or prints before any work: the same
    ``main`` as :func:`run_cli`, without paying a new interpreter's import of torch and timm (about 5 s a call on
    a 2-core machine). Log records (INFO and up, as ``setup_console`` shows them on rank 0) and warnings join
    stderr, as they would in a process of its own; an exception ``main`` does not turn into an exit code propagates
    to the test, traceback and all."""
    from openmae.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    root, handler = logging.getLogger(), logging.StreamHandler(err)
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            try:
                code = main(list(args))
            except SystemExit as stop:  # argparse's refusals
                code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    for w in caught:
        err.write(warnings.formatwarning(w.message, w.category, w.filename, w.lineno))
    return subprocess.CompletedProcess(["openmae", *args], code, out.getvalue(), err.getvalue())


def batches_of_size(imgs: torch.Tensor, size: int) -> list[Batch]:
    """Unlabelled images (N, C, H, W) as loader batches of ``size`` (the last one shorter)."""
    return [Batch(imgs[i : i + size], torch.zeros(len(imgs[i : i + size])), torch.zeros(0), 0)
            for i in range(0, len(imgs), size)]


def assert_trained_grads_match(model: torch.nn.Module, reference: torch.nn.Module) -> None:
    """``model``'s trained parameters have ``reference``'s gradients (the same loss with everything trained); its
    frozen ones have none, where the reference's reach them (nonzero)."""
    full = dict(reference.named_parameters())
    for name, param in model.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(param.grad, full[name].grad, rtol=1e-5, atol=1e-7, msg=name)
        elif full[name].requires_grad:
            assert param.grad is None and full[name].grad is not None and full[name].grad.abs().sum() > 0, name


def debug_mae_file(path: Path) -> torch.nn.Module:
    """The debug MAE (random weights drawn after seed 0) saved at ``path`` as a pretrained MAE's file; returned."""
    import openmae

    torch.manual_seed(0)
    model = openmae.create_model("mae_vit_debug_patch4_32")
    torch.save({"model": model.state_dict(), "model_config": model.cfg.to_dict()}, path)
    return model


def photo_folders(root: Path, layout: dict[str, list[Path]]) -> None:
    """Copies of photos in folders under ``root``: ``layout`` maps each folder (``test/good``) to its photos."""
    for folder, chosen in layout.items():
        (root / folder).mkdir(parents=True)
        for photo in chosen:
            (root / folder / photo.name).write_bytes(photo.read_bytes())


def reference_case(tmp_path: Path, datasets: Path, good: slice, new: slice
                   ) -> tuple[Path, torch.nn.Module, list[Path], Path, Path, list[str]]:
    """A debug MAE's file (:func:`debug_mae_file`), the sample photos, a reference folder ``good/`` of the photos
    ``good`` and a folder ``new/`` of the photos ``new``, and the settings that evaluate ``new/``: (checkpoint, model,
    photos, good/, new/, settings)."""
    ckpt = tmp_path / "mae.pth"
    model = debug_mae_file(ckpt)
    photos = sorted((datasets / "imagenet-sample").glob("*.JPEG"))
    photo_folders(tmp_path, {"good": photos[good], "new": photos[new]})
    queries = tmp_path / "new"
    return ckpt, model, photos, tmp_path / "good", queries, ["data.name=folder", f"data.path={queries}",
                                                              "data.num_workers=0"]
