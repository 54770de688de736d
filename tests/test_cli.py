"""The command line on real data: loss goes down, and the run folder holds everything a user needs."""

import json

import pytest
from helpers import REPO, call_cli, run_cli
from PIL import Image

COMMON = ["train.log_every_steps=5", "train.progress=false", "data.num_workers=2", "train.warmup_epochs=1",
          "train.blr=1.5e-3", "pretrain.vis_images=4"]


def losses(run_dir):
    return [json.loads(ln)["loss"] for ln in (run_dir / "metrics.jsonl").read_text().splitlines()
            if "loss" in json.loads(ln)]


@pytest.mark.parametrize("dataset,model,size", [
    ("cifar10", "mae_vit_debug_patch4_32", 32),
    ("fashion-mnist", "mae_vit_tiny_patch7_28_gray", 28),
])
def test_real_data_run_lowers_loss_and_writes_outputs(tmp_path, datasets, dataset, model, size):
    extra = ["model.depth=2", "model.decoder_depth=1"] if "tiny" in model else []
    proc = run_cli("pretrain", f"--data-root={datasets}", "-o", str(tmp_path / "run"), f"model.name={model}",
                   f"data.name={dataset}", "data.max_samples=1024", "train.batch_size=64", "train.epochs=4", *COMMON,
                   *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    curve = losses(run)
    assert len(curve) == 16  # every 5 steps, plus the end of each 16-step epoch
    assert sum(curve[-3:]) / 3 < 0.85 * sum(curve[:3]) / 3, curve
    assert (run / "checkpoint-000000064.pth").is_file() and (run / "model-last.pth").is_file()
    assert "model:" in (run / "config.yaml").read_text() and f"name: {dataset}" in (run / "config.yaml").read_text()
    picture = Image.open(run / "pictures" / "reconstruction-epoch0004.png")
    scale = 128 // size
    assert picture.size == (4 * size * scale + 3 * 2, 4 * size * scale + 3 * 2)
    assert (run / "loss_curve.png").stat().st_size > 1000
    assert any((run / "tb").iterdir())
    assert "model:\n  name: " + model in proc.stderr  # resolved config printed at start


@pytest.mark.parametrize("override,message", [
    ("train.epochs=abc", "train.epochs='abc' must be an integer"),
    ("pretrain.mask_ratio=1.0", "pretrain.mask_ratio=1.0 is invalid: must be strictly between 0 and 1"),
    ("train.batch_size=0", "train.batch_size=0 is invalid"),
    ("model.patch_size=5", "patch size 5 does not divide image size 32x32"),
    ("train.lrr=0.1", "unknown setting(s) ['train.lrr']"),
    ("data.name=imagenet21k", "data.name='imagenet21k' is invalid"),
    ("train.precision=fp8", "train.precision='fp8' is invalid"),
])
def test_bad_settings_refused_before_work(tmp_path, override, message):
    proc = call_cli("pretrain", "-o", str(tmp_path / "run"), "model.name=mae_vit_debug_patch4_32", "data.name=cifar10",
                    override)
    assert proc.returncode == 2
    assert message in proc.stderr, proc.stderr
    assert not (tmp_path / "run").exists()


def test_print_config_and_presets(tmp_path):
    proc = call_cli("pretrain", "-c", str(REPO / "configs/pretrain/mae_vit_base_imagenet.yaml"), "--print-config")
    assert proc.returncode == 0, proc.stderr
    assert "blr: 0.00015" in proc.stdout and "epochs: 800" in proc.stdout and "norm_pix_loss: true" in proc.stdout


def test_print_config_shows_defaults_before_data_is_chosen():
    """--print-config with nothing else (no data yet) still shows every setting, then says what stops it from
    running, with exit code 2."""
    proc = call_cli("finetune", "--print-config")
    assert proc.returncode == 2 and "model_ema: false" in proc.stdout and "reprob: 0.25" in proc.stdout
    assert "cannot run as it is: data.path=''" in proc.stderr
    proc = call_cli("pretrain", "--print-config", "data.name=cifar10")
    assert proc.returncode == 0 and "init: ''" in proc.stdout, proc.stderr


def test_help_print_config_and_refusals_answer_without_torch():
    """The CLI reads and checks settings before it imports the task: `--help`, `--print-config` and a refused
    setting of every command answer without importing torch or timm (a fraction of a second, not 5-9 s)."""
    import subprocess
    import sys

    script = """
import sys
from openmae.cli.main import main
codes = []
for argv in (["--help"], ["pretrain", "--help"], ["evaluate", "--help"],
             ["pretrain", "--print-config", "data.name=cifar10", "model.name=B/16"],
             ["pretrain", "data.name=cifar10", "model.patch_size=5"],
             ["finetune", "--print-config", "data.name=cifar10", "finetune.shift_mode=wrap"],
             ["linprobe", "--checkpoint", "x.pth", "data.name=cifar10", "linprobe.pooling=max"],
             ["knn", "data.name=cifar10", "knn.k=0"],
             ["evaluate", "--checkpoint", "x.pth", "evaluate.tta=crop", "data.name=cifar10"],
             ["pretrain", "data.name=cifar10", "train.stop_signals=[SIGNOPE]"]):
    try:
        codes.append(main(argv))
    except SystemExit as stop:
        codes.append(stop.code)
print(codes, sorted(m for m in ("torch", "timm", "torchvision") if m in sys.modules), file=sys.stderr)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.stderr.splitlines()[-1] == "[0, 0, 0, 0, 2, 2, 2, 2, 2, 2] []", proc.stderr[-3000:]
    for message in ("patch size 5 does not divide image size 224x224", "finetune.shift_mode='wrap' is invalid",
                    "linprobe.pooling='max' is invalid", "knn.k=0 is invalid", "evaluate.tta='crop' is invalid",
                    "train.stop_signals=['SIGNOPE'] is invalid"):
        assert message in proc.stderr, message
    assert "name: B/16" in proc.stdout and "mask_ratio: 0.75" in proc.stdout and "shift_mode: wrap" in proc.stdout


def test_version_names_openmae_python_and_the_libraries():
    """`openmae --version`: the first lines of a bug report, on stdout, exit 0; openmae's own version is the one the
    package was installed as (pyproject.toml), so the two cannot drift apart."""
    import platform
    from importlib.metadata import version

    import timm
    import torch

    import openmae

    proc = call_cli("--version")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"openmae {openmae.__version__}" == f"openmae {version('openmae')}"
    assert lines[1].startswith(f"python {platform.python_version()} (")
    assert lines[2].startswith(f"torch {torch.__version__} (") and f"timm {timm.__version__}" in lines
    assert f"{torch.get_num_threads()} CPU threads" in lines[2]
    assert ("GPU(s): " in lines[2]) == torch.cuda.is_available()
    assert all(" " in line for line in lines) and len(lines) == 10


def test_each_command_offers_only_the_flags_it_uses():
    """knn writes no run folder and resumes nothing: it has no --output / --resume (they used to be offered and then
    refused as an unknown 'train' setting); evaluate needs its classifier."""
    from openmae.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    flags = {name: {o for a in p._actions for o in a.option_strings} for name, p in sub.items()}
    assert {"--output", "--resume"} <= flags["finetune"] and {"--output", "--resume"} <= flags["pretrain"]
    assert not {"--output", "-o", "--resume"} & flags["knn"] and "--checkpoint" in flags["knn"]
    assert {"--checkpoint", "--plot", "-o"} <= flags["evaluate"] and "--resume" not in flags["evaluate"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["evaluate", "data.name=cifar10"])  # --checkpoint is required


def readme_commands() -> list[list[str]]:
    """The README's `openmae …` and `torchrun … -m openmae …` lines of its code blocks (continuations joined,
    trailing comments cut), each as the words after `openmae`; `...` placeholders left out."""
    import re
    import shlex

    words = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", (REPO / "README.md").read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("torchrun ") and " -m openmae " in line:
                line = "openmae " + line.split(" -m openmae ", 1)[1]
            if line.startswith("openmae ") and "..." not in line:
                words.append(shlex.split(line)[1:])
    return words


def test_readme_commands_are_ones_the_cli_accepts():
    """Every command the README shows parses (its flags are the command's; what is left is `key=value`
    settings), and a training or evaluation command's settings resolve (--print-config exits 0): a renamed
    setting, preset, config file or flag in the README fails here."""
    from openmae.cli.main import build_parser

    commands = readme_commands()
    assert len(commands) >= 25 and {c[0] for c in commands} >= {"pretrain", "finetune", "linprobe", "knn", "evaluate",
                                                                  "visualize", "convert", "info", "benchmark"}
    for words in commands:
        if words[0].startswith("--"):  # openmae --version: prints, then exits 0
            with pytest.raises(SystemExit, match="0"):
                build_parser().parse_known_args(words)
            continue
        _, rest = build_parser().parse_known_args(words)
        assert all("=" in word and not word.startswith("-") for word in rest), words
        if words[0] in ("pretrain", "finetune", "linprobe", "knn", "evaluate"):
            proc = call_cli(*words, "--print-config")
            assert proc.returncode == 0, (words, proc.stderr[-2000:])


@pytest.mark.parametrize("command,message", [
    (["pretrain"], "data.path='' is invalid: must be a folder of images (data.name=folder): give it with --data "
                   "<folder or file.csv>"),
    (["visualize"], "visualize needs the weights to reconstruct with: --checkpoint <file or folder>"),
])
def test_a_command_run_bare_says_what_it_needs(command, message):
    proc = call_cli(*command)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_a_ctrl_c_that_stops_at_once_exits_130_without_a_traceback(monkeypatch, capsys):
    """A second Ctrl-C in training (or one outside it) reaches the command as KeyboardInterrupt: the CLI says what
    was kept and exits as a shell reports Ctrl-C, instead of Python's traceback; a command that writes no run (info,
    knn, ...) says no more than that it stopped."""
    from openmae.cli import main as cli_main

    def interrupted(args, rest):
        raise KeyboardInterrupt

    for command, args in (("pretrain", ["--print-config"]), ("info", ["runs/mine"])):
        monkeypatch.setitem(cli_main.COMMANDS, command, (cli_main.COMMANDS[command][0], interrupted))
        assert cli_main.main([command, *args]) == 130
    training, info = capsys.readouterr().err.splitlines()
    assert training.startswith("openmae pretrain: stopped by Ctrl-C at once, without saving") and "--resume auto" in training
    assert info == "openmae info: stopped by Ctrl-C"


def test_a_command_that_runs_in_one_process_is_refused_under_torchrun(monkeypatch, capsys, datasets):
    """visualize, convert, ... under torchrun: every rank did the whole work again, all on the first GPU, and
    wrote the same files; they are refused, naming the commands that split their work between ranks."""
    from openmae.cli import main as cli_main

    monkeypatch.setenv("WORLD_SIZE", "2")
    for command, *args in ( ["visualize"], ["convert", "a", "b", "--to", "hf"],
                           ["info", "x"], ["benchmark"], ["demo"]):
        assert cli_main.main([command, *args]) == 2, command
        assert f"openmae {command}: runs in one process, but torchrun started 2" in capsys.readouterr().err
    assert cli_main.main(["pretrain", f"--data-root={datasets}", "data.name=cifar10", "--print-config"]) == 0
    assert "runs in one process" not in capsys.readouterr().err
