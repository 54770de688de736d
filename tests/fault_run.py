"""``python tests/fault_run.py <openmae args>``: the openmae CLI with one fault injected, chosen by $FAULT.

- ``kill_in_save:<step>``: SIGKILL half-way through writing the checkpoint of that step (a torn temp file).
- ``kill_at_step:<rank>:<step>``: that rank SIGKILLs itself right after optimizer step <step>, on the
  first attempt only (torchrun's TORCHELASTIC_RESTART_COUNT == 0).
- ``signal_at_step:<rank>:<step>:<name>``: that rank sends itself the signal <name> (e.g. SIGUSR1) right after
  optimizer step <step>, on the first attempt only.
- ``raise_at_step:<step>``: optimizer step <step> raises a RuntimeError the CLI does not catch (as a CUDA
  out-of-memory error would).
- ``signal_in_eval:<rank>:<call>:<name>``: that rank sends itself the signal <name> when the encoder's features are
  computed for an evaluation (the kNN monitor) for the <call>-th time, on the first attempt only.
- ``slow_main:<seconds>``: rank 0's first checkpoint write and first reconstruction pictures' write each take that
  many seconds longer, while the other ranks wait for it, on the first attempt only.
- ``raise_in_eval``: the encoder's features raise a RuntimeError when computed for an evaluation (the kNN monitor),
  while the evaluation's loader is part-way through its images.
"""

import io
import os
import signal
import sys
from pathlib import Path

import torch

fault = os.environ.get("FAULT", "")
if fault.startswith("kill_in_save:"):
    target = f"checkpoint-{int(fault.split(':')[1]):09d}.pth"
    import openmae.engine.checkpoint as checkpoint

    real_save = checkpoint.save_file

    def torn_save(obj, path):
        if Path(path).name != target:
            return real_save(obj, path)
        buf = io.BytesIO()
        torch.save(obj, buf)
        tmp = Path(path).parent / f".{Path(path).name}.crash.tmp"
        with open(tmp, "wb") as fh:
            fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            fh.flush()
            os.fsync(fh.fileno())
        os.kill(os.getpid(), signal.SIGKILL)

    checkpoint.save_file = torn_save
elif fault.startswith(("kill_at_step:", "signal_at_step:")):
    _, rank, step, *name = fault.split(":")
    number = getattr(signal, name[0]) if name else signal.SIGKILL
    if os.environ.get("RANK", "0") == rank and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
        real_step = torch.optim.AdamW.step
        calls = {"n": 0}

        def dying_step(self, *args, **kwargs):
            out = real_step(self, *args, **kwargs)
            calls["n"] += 1
            if calls["n"] == int(step):
                os.kill(os.getpid(), number)
            return out

        torch.optim.AdamW.step = dying_step

elif fault.startswith("raise_at_step:"):
    failing, real_adamw_step = int(fault.split(":")[1]), torch.optim.AdamW.step
    taken = {"n": 0}

    def failing_step(self, *args, **kwargs):
        taken["n"] += 1
        if taken["n"] == failing:
            raise RuntimeError(f"injected failure at optimizer step {failing}")
        return real_adamw_step(self, *args, **kwargs)

    torch.optim.AdamW.step = failing_step

elif fault.startswith("signal_in_eval:"):
    from openmae.models.mae import MaskedAutoencoder

    _, rank, call, name = fault.split(":")
    if os.environ.get("RANK", "0") == rank and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
        evaluation_features, evaluated = MaskedAutoencoder.forward_features, {"n": 0}

        def signalling_features(self, *args, **kwargs):
            if not self.training:
                evaluated["n"] += 1
                if evaluated["n"] == int(call):
                    os.kill(os.getpid(), getattr(signal, name))
            return evaluation_features(self, *args, **kwargs)

        MaskedAutoencoder.forward_features = signalling_features

elif fault.startswith("slow_main:"):
    if os.environ.get("RANK", "0") == "0" and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
        import time

        import openmae.engine.checkpoint as checkpoint
        import openmae.engine.pretrain as pretrain

        delay, slowed = float(fault.split(":")[1]), set()
        real_save, real_grid = checkpoint.save_file, pretrain.save_grid

        def slow_once(what: str) -> None:
            if what not in slowed:
                slowed.add(what)
                time.sleep(delay)

        def slow_save(obj, path):
            slow_once("save")
            return real_save(obj, path)

        def slow_grid(*args, **kwargs):
            slow_once("pictures")
            return real_grid(*args, **kwargs)

        checkpoint.save_file = slow_save
        pretrain.save_grid = slow_grid

elif fault == "raise_in_eval":
    from openmae.models.mae import MaskedAutoencoder

    real_features = MaskedAutoencoder.forward_features

    def failing_features(self, *args, **kwargs):
        if not self.training:
            raise RuntimeError("injected failure in evaluation")
        return real_features(self, *args, **kwargs)

    MaskedAutoencoder.forward_features = failing_features

from openmae.cli.main import main  # noqa: E402

sys.exit(main())
