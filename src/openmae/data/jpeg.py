"""The device path's JPEG decoder (``data.jpeg_decoder``): torchvision's ``decode_jpeg`` or TorchCodec's.

torchvision 0.29 deprecates its image decoding in favour of TorchCodec (``torchcodec`` >= 0.16), whose
``decode_jpeg`` takes the same input (1-D uint8 tensors of a file's bytes; a list decoded in one nvJPEG call on
CUDA) and gives the same pixels on the CPU (``tests/test_device_augment.py``). ``auto`` uses torchvision's while it
has one (the decoder every GPU measurement in ``docs/benchmarks.md`` used) and TorchCodec's once it is gone;
``torchcodec`` asks for TorchCodec's now (``pip install openmae[torchcodec]``)."""

from __future__ import annotations

from collections.abc import Callable

DECODERS = ("auto", "torchvision", "torchcodec")


def _torchvision():
    try:
        from torchvision.io import decode_jpeg
    except ImportError:
        return None
    return decode_jpeg


def _torchcodec():
    try:
        from torchcodec.decoders import decode_jpeg
    except ImportError:
        return None
    return decode_jpeg


def jpeg_decoder(choice: str = "auto") -> Callable:
    """``decode(data, mode="RGB" | "GRAY", device=...)``: one 1-D uint8 tensor, or a list of them decoded
    together, into (C, H, W) uint8 tensors on ``device``."""
    if choice not in DECODERS:
        raise ValueError(f"data.jpeg_decoder={choice!r} is not a decoder: choose one of {list(DECODERS)}")
    decode = _torchvision() if choice in ("auto", "torchvision") else None
    if decode is None and choice != "torchvision":
        decode = _torchcodec()
    if decode is not None:
        return decode
    if choice == "torchvision":
        raise ImportError("data.jpeg_decoder=torchvision, but this torchvision has no decode_jpeg (removed in favour "
                          "of TorchCodec): set data.jpeg_decoder=torchcodec and pip install torchcodec")
    if choice == "torchcodec":
        other = ", or set data.jpeg_decoder=auto for torchvision's decoder" if _torchvision() is not None else ""
        raise ImportError("data.jpeg_decoder=torchcodec, but TorchCodec is not installed (or failed to import): "
                          f"pip install torchcodec (or openmae[torchcodec]){other}")
    raise ImportError(f"data.jpeg_decoder={choice}: no JPEG decoder found (torchvision's decode_jpeg is gone, and "
                      "TorchCodec is not installed): pip install torchcodec (or openmae[torchcodec])")
