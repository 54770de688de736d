"""``openmae --version``: the versions a bug report starts with, computed only when asked (it imports torch)."""

from __future__ import annotations

import argparse
import platform

LIBRARIES = ("torchvision", "timm", "safetensors", "numpy", "transformers", "tensorboard", "torchcodec")


def version_text() -> str:
    """openmae's version, Python's, torch's with its build and the devices it sees, and the installed versions of
    the other libraries a run depends on (read from their metadata, not imported): a bug report's first lines."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    import openmae

    if torch.cuda.is_available():
        names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
        devices = f"{torch.cuda.device_count()} GPU(s): {', '.join(names)}"
    else:
        devices = "no GPU visible" if torch.version.cuda or torch.version.hip else "CPU build"
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else f"ROCm {torch.version.hip}" if torch.version.hip else "CPU"
    lines = [f"openmae {openmae.__version__}", f"python {platform.python_version()} ({platform.platform()})",
             f"torch {torch.__version__} ({build}; {devices}; {torch.get_num_threads()} CPU threads)"]
    for name in LIBRARIES:
        try:
            lines.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            lines.append(f"{name} not installed")
    return "\n".join(lines)


class VersionAction(argparse.Action):
    """``--version``: :func:`version_text`, computed only when asked (it imports torch)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs) -> None:
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(version_text())  # on stdout, as argparse's own version action
        parser.exit()
