"""The settings a model is built from, without torch: the CLI and config checks read them in a fraction of a second.

:class:`MAEConfig` rebuilds a :class:`~openmae.models.mae.MaskedAutoencoder`; the name tuples are the choices the
model, classifier and feature code accept (those modules check that they implement exactly these).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

MASKINGS = ("random", "block", "grid")  # openmae.models.masking.STRATEGIES: uniform (the paper's), BEiT's blocks, a grid
GLOBAL_POOL = ("avg", "token")  # the classifier's pooling: fc_norm over the mean of the patch tokens, or the cls token
POOLING = ("cls", "mean", "cls+mean")  # frozen features for kNN and probes: cls token, patch mean, both concatenated


def grid_size(img_size: tuple[int, int], patch_size: int) -> tuple[int, int]:
    """Number of patches along (height, width); raises if the patch does not divide the image."""
    h, w = img_size
    if patch_size <= 0 or h % patch_size or w % patch_size:
        raise ValueError(
            f"patch size {patch_size} does not divide image size {h}x{w} (HxW); "
            f"choose a patch size that divides both sides, or resize the images"
        )
    return h // patch_size, w // patch_size


@dataclass
class MAEConfig:
    """Everything that rebuilds a :class:`MaskedAutoencoder` (stored in every checkpoint)."""

    img_size: tuple[int, int] = (224, 224)
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    mlp_ratio: float = 4.0
    norm_pix_loss: bool = False
    masking: str = "random"
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.img_size, int):
            self.img_size = (self.img_size, self.img_size)
        self.img_size = tuple(int(s) for s in self.img_size)  # type: ignore[assignment]
        grid_size(self.img_size, self.patch_size)  # raises on a patch that does not divide the image
        for width, heads, what in ((self.embed_dim, self.num_heads, "encoder"),
                                   (self.decoder_embed_dim, self.decoder_num_heads, "decoder")):
            if heads <= 0 or width % heads:
                raise ValueError(f"{what} width {width} is not divisible by its {heads} heads")
            if width % 4:
                raise ValueError(f"{what} width {width} must be a multiple of 4 for 2-D sin-cos embeddings")
        if self.in_chans <= 0:
            raise ValueError(f"in_chans must be positive, got {self.in_chans}")
        if self.masking not in MASKINGS:
            raise ValueError(f"unknown masking strategy {self.masking!r}; choose one of {sorted(MASKINGS)}")

    @property
    def grid(self) -> tuple[int, int]:
        return grid_size(self.img_size, self.patch_size)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["img_size"] = list(self.img_size)
        return d
