"""The next batch's decoding in a thread (``openmae.data.ahead.DeviceAhead``): the same batches, in order, as the
in-line device stage; errors reach the training loop at their batch; an early stop ends the thread."""

import threading
import time

import pytest
import torch

from openmae.data.ahead import DeviceAhead
from openmae.data.build import train_dataset
from openmae.data.config import DataConfig
from openmae.data.images import BadImageError
from openmae.data.loader import make_loader


def device_path(datasets, workers=2, count=96, batch=16):
    cfg = DataConfig(name="folder", path=str(datasets / "imagenet-sample"), device_augment=True, max_samples=count,
                     num_workers=workers)
    dataset, sampler = train_dataset(cfg, (48, 48), 3, batch_size=batch, seed=4)
    return dataset, make_loader(dataset, sampler, workers, pin_memory=False)


def test_ahead_gives_the_in_line_batches_in_order(datasets):
    dataset, loader = device_path(datasets)
    cpu = torch.device("cpu")
    in_line = [dataset.to_device(b, cpu) for b in loader]
    with DeviceAhead(iter(loader), dataset, cpu) as ahead:
        threaded = list(ahead)
        with pytest.raises(StopIteration):  # asked again after the end: still the end
            next(ahead)
    assert len(threaded) == len(in_line) == 6
    for a, b in zip(in_line, threaded):
        assert torch.equal(a.images, b.images) and torch.equal(a.seeds, b.seeds) and torch.equal(a.labels, b.labels)


def test_an_error_of_the_device_stage_reaches_the_loop_at_its_batch(datasets):
    dataset, loader = device_path(datasets)
    calls = {"n": 0}
    decode = dataset.device_stage.decode

    def failing(batch, device):
        calls["n"] += 1
        if calls["n"] == 3:
            raise BadImageError("photo.jpg: JPEG decoding failed")
        return decode(batch, device)

    dataset.device_stage.decode = failing
    ahead = DeviceAhead(iter(loader), dataset, torch.device("cpu"))
    assert next(ahead).images.shape == (16, 3, 48, 48) and next(ahead).images.shape[0] == 16
    with pytest.raises(BadImageError, match="photo.jpg"):
        next(ahead)
    with pytest.raises(BadImageError):  # and again, instead of waiting for a thread that has ended
        next(ahead)
    ahead.close()


def test_closing_early_ends_the_thread(datasets):
    dataset, loader = device_path(datasets)
    ahead = DeviceAhead(iter(loader), dataset, torch.device("cpu"))
    next(ahead)
    time.sleep(0.3)  # the thread has the next batch ready and waits to hand it over
    ahead.close()
    assert not any(t.name == "openmae-device-ahead" and t.is_alive() for t in threading.enumerate())
