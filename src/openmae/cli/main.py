"""``openmae <command>``: parse, build the config, call the engine. No logic a test cannot reach without a shell."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from openmae.config import ConfigError, dump_yaml, load_config

COMMANDS: dict[str, tuple[str, Callable[[argparse.Namespace, list[str]], int]]] = {}


def command(name: str, help_text: str):
    def register(fn):
        COMMANDS[name] = (help_text, fn)
        return fn
    return register


def run_overrides(args: argparse.Namespace, rest: list[str]) -> list[str]:
    """Shortcut flags -> ``key=value`` overrides; the remaining arguments are overrides themselves."""
    out = []
    if getattr(args, "data_root", None):
        out.append(f"data.root={args.data_root}")
    if getattr(args, "data", None):
        out.append(f"data.path={args.data}")
    if getattr(args, "output", None):
        out.append(f"train.output_dir={args.output}")
    if getattr(args, "resume", None):
        out.append(f"train.resume={args.resume}")
    for item in rest:
        if "=" not in item:
            raise ConfigError(f"unexpected argument {item!r}: settings look like key.sub=value (e.g. train.epochs=10)")
    return out + rest


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", action="append", default=[], help="YAML preset(s), applied in order")
    parser.add_argument("--data-root", help="folder holding named datasets (default $OPENMAE_DATA)")
    parser.add_argument("--data", help="image folder (data.path)")
    parser.add_argument("--output", "-o", help="run folder (train.output_dir)")
    parser.add_argument("--resume", help="'auto' (newest valid checkpoint in the run folder) or a checkpoint path")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


@command("pretrain", "MAE pretraining (torchrun-ready)")
def cmd_pretrain(args: argparse.Namespace, rest: list[str]) -> int:
    from openmae.engine.pretrain import PretrainConfig, pretrain

    cfg = load_config(PretrainConfig, args.config, run_overrides(args, rest))
    if args.print_config:
        print(dump_yaml(cfg))
        return 0
    if int(__import__("os").environ.get("RANK", "0")) == 0:
        print(dump_yaml(cfg), file=sys.stderr)
    pretrain(cfg)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="openmae", description="Masked Autoencoders: pretrain, evaluate, convert.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, _) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name in ("pretrain",):
            add_run_flags(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    try:
        return COMMANDS[args.command][1](args, rest)
    except ConfigError as err:
        print(f"openmae {args.command}: configuration error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
