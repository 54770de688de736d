"""Where a run's starting weights come from: an init file in any layout `openmae convert` reads, or, when the
run resumes, its own checkpoint (then the init file is not read at all)."""

from __future__ import annotations

import logging

import torch

from openmae.convert.checkpoints import file_architecture, to_openmae_keys
from openmae.convert.files import averaged_weights, load_file, unwrap_state_dict
from openmae.data.config import DataConfig
from openmae.data.normalization import inherit_stats
from openmae.engine.config import ModelSection
from openmae.models.mae import MAEConfig

log = logging.getLogger("openmae.weights")


def resolve_encoder(model: ModelSection, init: str, resumed: dict | None = None, data: DataConfig | None = None
                    ) -> tuple[MAEConfig, dict[str, torch.Tensor] | None, tuple[int, int] | None]:
    """Encoder config, its weights (None: random init, or the checkpoint's when resuming) and the grid the
    weights were trained at.

    ``model.name=auto`` takes the architecture from ``init`` (stored config, else inferred from shapes);
    overrides such as ``model.img_size`` still apply (the position table is then interpolated).
    ``resumed`` is the model config stored in the checkpoint a run resumes from: the checkpoint's weights replace
    the init file's, so the file is not read (it may be large, or have moved since the run began) and ``auto``
    takes the checkpoint's architecture, with the ``model.*`` overrides on top (a changed one then fails the
    loop's check that the checkpoint fits the run). ``data``: its ``mean`` / ``std``, when unset, become those the
    init file records (:func:`openmae.data.normalization.inherit_stats`; a resumed run's come from its checkpoint).
    """
    if not init:
        if model.name == "auto":
            raise ValueError("model.name=auto needs an init checkpoint to read the architecture from; "
                             "set finetune.init / linprobe.init / pretrain.init, or name a model preset")
        return model.resolve(), None, None
    if resumed is not None:
        log.info("%s not read: the run resumes from its own checkpoint", init)
        cfg = MAEConfig(**{**resumed, **model.overrides()}) if model.name == "auto" else model.resolve()
        return cfg, None, None
    obj = load_file(init)
    if model.ema:
        obj = averaged_weights(obj, init)
        log.info("%s: its averaged (EMA) weights are read (model.ema=true)", init)
    raw = unwrap_state_dict(obj)
    sd = to_openmae_keys(raw)
    if "norm.weight" not in sd and "fc_norm.weight" in raw:  # a classifier fine-tuned with average pooling: its
        sd.update({k: raw[k] for k in ("fc_norm.weight", "fc_norm.bias")})  # features' norm (pooled_by_fc_norm)
    stored = file_architecture(obj, sd, init, heads_set=model.num_heads is not None or model.name != "auto")
    if model.name == "auto":
        cfg = MAEConfig(**{**stored.to_dict(), **model.overrides()})
    else:
        cfg = model.resolve()
    if data is not None:
        inherit_stats(data, obj, init, cfg.in_chans)
    return cfg, sd, stored.grid
