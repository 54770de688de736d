"""``openmae <command>``: parse, build the config, call the engine. No logic a test cannot reach without a shell."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
from collections.abc import Callable

from openmae.cli.version import VersionAction
from openmae.cli.visualize_flags import add_visualize_flags
from openmae.config import ConfigError, dump_yaml, from_dict, load_config, parse_override, preset_names, validate
from openmae.data.config import CSV_SUFFIXES
from openmae.engine.config import COMPILE_MODES
from openmae.engine.task_config import (
    EmbedConfig,
    EvaluateConfig,
    FinetuneConfig,
    KnnConfig,
    LinprobeConfig,
    PretrainConfig,
)

# Only settings are imported up front (no torch, no timm): `--help`, `--print-config` and a refused setting answer
# in a fraction of a second; each command imports what runs it once its config has been read and checked.

COMMANDS: dict[str, tuple[str, Callable[[argparse.Namespace, list[str]], int]]] = {}


def command(name: str, help_text: str):
    def register(fn):
        COMMANDS[name] = (help_text, fn)
        return fn
    return register


LABELLED = ("finetune", "linprobe", "knn", "evaluate")  # the commands that read labels: --data names class folders
TRAINING = ("pretrain", "finetune", "linprobe", "demo")  # the commands that write runs (checkpoints) to resume
# the commands that split their work between torchrun's ranks
DISTRIBUTED = ("pretrain", "finetune", "linprobe", "knn", "evaluate", "embed")


def run_overrides(args: argparse.Namespace, rest: list[str]) -> list[str]:
    """Shortcut flags -> ``key=value`` overrides; the remaining arguments are overrides themselves."""
    out = []
    if getattr(args, "data_root", None):
        out.append(f"data.root={args.data_root}")
    if getattr(args, "data", None):
        if args.data.lower().endswith(CSV_SUFFIXES):  # a list of images and their labels
            out.append("data.name=csv")
        elif args.command in LABELLED:  # class folders: what a folder can only mean for these
            out.append("data.name=imagefolder")
        out.append(f"data.path={args.data}")
    if getattr(args, "output", None):
        out.append(f"train.output_dir={args.output}")
    if getattr(args, "resume", None):
        out.append(f"train.resume={args.resume}")
    for item in rest:
        if "=" not in item:
            flags = [f"{flag} {item}" for flag, name in (("--checkpoint", "checkpoint"), ("--data", "data"))
                     if hasattr(args, name)]
            where = (f": it is a {'folder' if os.path.isdir(item) else 'file'}, give it as {' or '.join(flags)};"
                     if flags and os.path.exists(item) else ":")
            raise ConfigError(f"unexpected argument {item!r}{where} settings look like key.sub=value (e.g. "
                              "train.epochs=10)")
    return out + rest


def add_run_flags(parser: argparse.ArgumentParser, training: bool = True, presets: str = "") -> None:
    """The flags of commands built from a config; ``training``: also the run folder and resuming (not for knn and
    evaluate, which write no run); ``presets``: the folder of the command's installed presets (none for some)."""
    names = preset_names(presets)
    parser.add_argument("--config", "-c", action="append", default=[],
                        help="YAML file(s), applied in order" + (f", or the name of a preset installed with openmae: "
                                                                  f"{', '.join(names)}" if names else ""))
    parser.add_argument("--data-root", help="folder holding named datasets (default $OPENMAE_DATA)")
    parser.add_argument("--data", help="image folder (data.path); for the commands that read labels, a folder of "
                        "class folders (data.name=imagefolder), or of split folders holding them (train/, test/); "
                        "or a CSV file of images and labels (data.name=csv; {split} in its name: a file a split)")
    if training:
        parser.add_argument("--output", "-o", help="run folder (train.output_dir)")
        parser.add_argument("--resume", help="'auto' (newest valid checkpoint in the run folder) or a checkpoint path")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def print_config(config_cls, files: list[str], overrides: list[str]) -> int:
    """--print-config: the resolved settings, printed even when they cannot run yet (e.g. no data chosen), then
    exit 2 with the reason in that case, so the flag also validates a config."""
    cfg = load_config(config_cls, files, overrides, check=False)
    print(dump_yaml(cfg))
    try:
        validate(cfg)
    except ConfigError as err:
        print(f"openmae: this configuration cannot run as it is: {err}", file=sys.stderr)
        return 2
    return 0


@command("pretrain", "MAE pretraining (torchrun-ready)")
def cmd_pretrain(args: argparse.Namespace, rest: list[str]) -> int:
    if args.print_config:
        return print_config(PretrainConfig, args.config, run_overrides(args, rest))
    cfg = load_config(PretrainConfig, args.config, run_overrides(args, rest))
    if int(os.environ.get("RANK", "0")) == 0:
        print(dump_yaml(cfg), file=sys.stderr)
    from openmae.engine.preempt import exit_code
    from openmae.engine.pretrain import pretrain

    return exit_code(pretrain(cfg))


def _run_task(config_cls, runner: str, args: argparse.Namespace, rest: list[str], init_key: str | None = None) -> int:
    """Read and check ``config_cls``, then run it with ``runner`` ("module:function", imported only then)."""
    overrides = run_overrides(args, rest)
    if init_key and getattr(args, "checkpoint", None):
        overrides.insert(0, f"{init_key}={args.checkpoint}")
    if args.print_config:
        return print_config(config_cls, args.config, overrides)
    cfg = load_config(config_cls, args.config, overrides)
    from openmae.engine.logging import setup_console

    setup_console(int(os.environ.get("RANK", "0")) == 0)  # every command says what it measured, took and skipped
    if int(os.environ.get("RANK", "0")) == 0:
        print(dump_yaml(cfg), file=sys.stderr)
    module, function = runner.split(":")
    result = getattr(importlib.import_module(module), function)(cfg)
    if int(os.environ.get("RANK", "0")) == 0 and result:
        print(json.dumps({k: v for k, v in result.items() if isinstance(v, (int, float, str, bool))}))
    from openmae.engine.preempt import exit_code

    return exit_code(result)


@command("finetune", "fine-tune a ViT classifier from a pretrained encoder (torchrun-ready)")
def cmd_finetune(args: argparse.Namespace, rest: list[str]) -> int:
    return _run_task(FinetuneConfig, "openmae.engine.finetune:finetune", args, rest, "finetune.init")


@command("linprobe", "linear probe of a frozen encoder (online or on cached features)")
def cmd_linprobe(args: argparse.Namespace, rest: list[str]) -> int:
    return _run_task(LinprobeConfig, "openmae.engine.linprobe:linprobe", args, rest, "linprobe.init")


@command("knn", "weighted kNN accuracy of an encoder's features")
def cmd_knn(args: argparse.Namespace, rest: list[str]) -> int:
    return _run_task(KnnConfig, "openmae.engine.knn_eval:knn_eval", args, rest, "knn.init")


@command("embed", "an encoder's features of every image of a split, to a safetensors file (and a map of them)")
def cmd_embed(args: argparse.Namespace, rest: list[str]) -> int:
    for flag, key in (("embed_out", "output"), ("plot", "plot")):
        rest = [*rest, f"embed.{key}={getattr(args, flag)}"] if getattr(args, flag) else rest
    return _run_task(EmbedConfig, "openmae.engine.embed:embed", args, rest, "embed.init")


@command("evaluate", "accuracy of a fine-tuned classifier (or online probe) on a split: top-1/5, per class, "
         "confusion; or a pretrained MAE's reconstruction loss")
def cmd_evaluate(args: argparse.Namespace, rest: list[str]) -> int:
    for flag, key in (("json_out", "output"), ("plot", "plot"), ("predictions", "predictions"),
                      ("calibration_plot", "calibration_plot")):
        rest = [*rest, f"evaluate.{key}={getattr(args, flag)}"] if getattr(args, flag) else rest
    return _run_task(EvaluateConfig, "openmae.engine.evaluate:run_evaluate", args, rest, "evaluate.init")


@command("visualize", "pictures: original | masked | reconstruction | pasted; error, feature or distance maps")
def cmd_visualize(args: argparse.Namespace, rest: list[str]) -> int:
    from openmae.data.config import DataConfig
    from openmae.data.datasets import suffixes_for
    from openmae.engine.logging import setup_console
    from openmae.eval.reconstruction import check_bands
    from openmae.eval.reference_file import reference_of
    from openmae.eval.visualize import drawing_model, image_paths, visualize_dataset, visualize_files

    setup_console(True)
    # positional arguments mix image paths and data.* settings; only DataConfig matters here (dataset,
    # normalisation, evaluation crop)
    settings = [a for a in args.images if "=" in a] + rest
    args.images = [a for a in args.images if "=" not in a]
    data = from_dict(DataConfig, dict(parse_override(item.removeprefix("data.")) for item in settings))
    if not args.checkpoint:
        raise ConfigError("visualize needs the weights to reconstruct with: --checkpoint <file or folder> (a "
                          "pretraining run's model-last.pth, an official mae_visualize_*.pth, a Hugging Face folder)")
    if args.count is not None and args.count < 1:
        raise ConfigError(f"--count={args.count}: give the number of pictures to write, 1 or more")
    reference = reference_of(args.distances, args.reference_images, args.coreset, args.save_reference,
                             args.map_views)
    model, cfg = drawing_model(args.checkpoint, data, args.features or args.distances is not None)
    check_bands(args.bands, cfg.in_chans)
    drawn = {"errors": args.errors, "features": args.features, "distances": reference, "cfg": cfg}
    if args.images:
        paths = image_paths(args.images, suffixes_for(data), data.csv_columns)
        if args.count is not None and args.count < len(paths):  # spread over the folders, not the first class's
            paths = [paths[i * len(paths) // args.count] for i in range(args.count)]
        written = visualize_files(model, paths, args.out, data, args.mask_ratio, args.seed, bands=tuple(args.bands),
                                  **drawn)
    elif data.name != "folder" or data.path:
        written = visualize_dataset(model, data, args.out, args.count or 8, args.mask_ratio, args.seed,
                                    tuple(args.bands), **drawn)
    else:
        raise ConfigError("give image files or folders, or a dataset (data.name=cifar10 data.root=...)")
    for path in written:
        print(path)
    return 0


@command("convert", "convert weights between openmae/official, timm and Hugging Face layouts")
def cmd_convert(args: argparse.Namespace, rest: list[str]) -> int:
    from openmae.convert.export import convert_file
    from openmae.engine.logging import setup_console

    setup_console(True)  # what the conversion read and assumed
    if rest:
        raise ConfigError(f"unexpected arguments {rest}")
    print(convert_file(args.src, args.dst, args.to, args.hf_layout))
    return 0


@command("info", "what a weights file or Hugging Face folder holds (layout, parts, architecture, normalisation, "
                 "run), or where a run folder's run stands")
def cmd_info(args: argparse.Namespace, rest: list[str]) -> int:
    from openmae.convert.summary import format_summary, summarize
    from openmae.engine.run_status import format_status, is_run_folder, run_status

    if rest:
        raise ConfigError(f"unexpected arguments {rest}")
    if is_run_folder(args.path):
        status = run_status(args.path)
        print(json.dumps(status, indent=1) if args.json else format_status(status))
        return 0
    from openmae.eval.reference_file import bank_summary, format_bank

    kept = bank_summary(args.path)  # a reference's patch tokens, not weights
    info = kept or summarize(args.path)
    print(json.dumps(info, indent=1) if args.json else format_bank(info) if kept else format_summary(info))
    return 0


@command("benchmark", "images/s, FLOPs and MFU of a pretraining step, beside Hugging Face and an eager reference")
def cmd_benchmark(args: argparse.Namespace, rest: list[str]) -> int:
    from openmae.engine.benchmark import benchmark, resolve_device, table

    if rest:
        raise ConfigError(f"unexpected arguments {rest}")
    gpu = resolve_device().type == "cuda"  # defaults sized to the machine: a CPU step of ViT-B/16 at 64 takes minutes
    preset = args.preset or ("mae_vit_base_patch16" if gpu else "mae_vit_small_patch16")
    batch = args.batch or (256 if gpu else 16)
    if args.profile:
        from openmae.engine.step_profile import profile_preset

        prof = profile_preset(preset, batch, args.precision, bool(args.compile), args.compile or "model",
                              args.grad_checkpointing, steps=min(args.steps, 3), compile_mode=args.compile_mode)
        print(prof.table())
        return 0
    result = benchmark(preset, batch, args.precision, bool(args.compile), not args.no_hf, True,
                       steps=args.steps, grad_checkpointing=args.grad_checkpointing, compile_scope=args.compile or "model",
                       compile_mode=args.compile_mode, eager_too=args.with_eager,
                       checkpointed_too=args.with_checkpointing)
    print(json.dumps(result))
    print(table(result))
    return 0


@command("demo", "pretrain a small MAE on real data for a few minutes and evaluate it")
def cmd_demo(args: argparse.Namespace, rest: list[str]) -> int:
    from openmae.engine.demo import run_demo

    return run_demo(args.data_root, args.output, rest, args.minutes)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="openmae", description="Masked Autoencoders: pretrain, evaluate, convert.")
    parser.add_argument("--version", action=VersionAction,
                        help="openmae's, Python's and the main libraries' versions, then exit")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, _) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name in ("pretrain", "finetune", "linprobe", "knn", "evaluate", "embed"):
            add_run_flags(p, training=name not in ("knn", "evaluate", "embed"), presets=name)
        if name in ("finetune", "linprobe", "knn", "visualize", "embed"):
            p.add_argument("--checkpoint", "--init", help="pretrained weights: a file (openmae, official, timm), a "
                           "Hugging Face folder or hub name (facebook/vit-mae-base), an https:// address, or a run "
                           "folder (its model-last.pth)")
        if name == "evaluate":
            p.add_argument("--checkpoint", "--init", required=True,
                           help="the classifier: model-best.pth of a finetune (or online linprobe) run, or its "
                                "model-last.pth / checkpoint-*.pth; or a pretrained MAE with its decoder (a pretrain "
                                "run's model-last.pth, mae_visualize_*.pth, facebook/vit-mae-base)")
            p.add_argument("--out", "-o", dest="json_out", help="JSON file for every number (per class, confusion)")
            p.add_argument("--plot", help="PNG of the confusion matrix (several classes an image: precision-recall "
                           "curves; a pretrained MAE: the 8 images it reconstructs worst)")
            p.add_argument("--predictions", help="CSV of each image's class, top-5 predictions and probabilities "
                           "(a pretrained MAE: each image's loss and PSNR)")
            p.add_argument("--calibration-plot", help="PNG of accuracy against confidence (its ECE)")
        if name == "embed":
            p.add_argument("--out", "-o", dest="embed_out", help="the .safetensors file (default embeddings.safetensors; "
                           "the images' CSV beside it)")
            p.add_argument("--plot", help="PNG of the images' first two principal components, coloured by class")
        if name == "visualize":
            add_visualize_flags(p)
        if name == "convert":
            p.add_argument("src", help="input weights (.pth/.pt/.bin/.safetensors, any supported layout), a Hugging "
                           "Face folder or a run folder")
            p.add_argument("dst", help="output file (.pth or .safetensors), or a folder (no suffix) for --to hf and "
                           "--to timm (a timm model folder; a classifier's, for --to hf too, is what transformers' "
                           "AutoModelForImageClassification loads)")
            p.add_argument("--to", required=True, choices=["openmae", "official", "timm", "hf"])
            p.add_argument("--hf-layout", default="v4", choices=["v4", "v5"],
                           help="Hugging Face key names: v4 = hub files / transformers 4, v5 = transformers 5")
        if name == "info":
            p.add_argument("path", help="a weights file (.pth/.pt/.bin/.safetensors), a Hugging Face model folder, "
                                        "a run folder (-o of a training command) or a kept reference")
            p.add_argument("--json", action="store_true", help="everything as JSON")
        if name == "benchmark":
            p.add_argument("--preset", help="default: mae_vit_base_patch16 on a GPU, mae_vit_small_patch16 on a CPU")
            p.add_argument("--batch", type=int, help="default: 256 on a GPU, 16 on a CPU")
            p.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
            p.add_argument("--compile", nargs="?", const="model", choices=["model", "blocks"],
                           help="torch.compile the whole forward (model, the default) or each block (blocks)")
            p.add_argument("--compile-mode", default="default", choices=COMPILE_MODES,
                           help="torch.compile mode; reduce-overhead replays the step as CUDA graphs on a GPU")
            p.add_argument("--no-hf", action="store_true", help="skip the Hugging Face comparison")
            p.add_argument("--grad-checkpointing", action="store_true")
            p.add_argument("--steps", type=int, default=10)
            p.add_argument("--with-eager", action="store_true",
                           help="with --compile: openmae's eager step as one more row of the same run")
            p.add_argument("--with-checkpointing", action="store_true",
                           help="openmae's eager step with activation checkpointing as one more row of the same run "
                                "(peak memory per image with and without it)")
            p.add_argument("--profile", action="store_true",
                           help="instead of the comparison: where openmae's step spends its time (matmuls, attention, "
                                "copies and casts, optimizer, the rest) and its costliest operators or GPU kernels")
        if name == "demo":
            p.add_argument("--data-root", help="folder holding fashion-mnist/ (default $OPENMAE_DATA)")
            p.add_argument("--output", "-o", default="runs/demo")
            p.add_argument("--minutes", type=float, default=7.0, help="expected pretraining minutes (shown only)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    world = os.environ.get("WORLD_SIZE", "1")
    if args.command not in DISTRIBUTED and world.isdigit() and int(world) > 1:
        # each rank would do the whole work again, every one on the first GPU, and write the same files
        print(f"openmae {args.command}: runs in one process, but torchrun started {world} (WORLD_SIZE={world}); run "
              f"it as `openmae {args.command} ...` without torchrun (only {', '.join(DISTRIBUTED)} split their work "
              "between ranks)", file=sys.stderr)
        return 2
    try:
        return COMMANDS[args.command][1](args, rest)
    except ConfigError as err:
        print(f"openmae {args.command}: configuration error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, NotADirectoryError, FileExistsError, ValueError) as err:
        print(f"openmae {args.command}: error: {err}", file=sys.stderr)
        return 1
    except RuntimeError as err:
        from openmae.data.images import BadImageError
        from openmae.engine.distributed import MainRankTimeout

        if not isinstance(err, (MainRankTimeout, BadImageError)):
            raise
        # what it waited for, or the file and why it could not be read (data.bad_files=fail), says it all
        print(f"openmae {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C in training, or one outside it: what a shell reports, no traceback
        kept = ("at once, without saving; a run's folder keeps the checkpoints saved before (`openmae info <run "
                "folder>` lists them; --resume auto continues from the last)") if args.command in TRAINING else ""
        print(f"openmae {args.command}: stopped by Ctrl-C {kept}".rstrip(), file=sys.stderr)
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
