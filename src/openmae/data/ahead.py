"""The next batch's decoding in a thread (``data.device_augment`` with loader workers).

The device stage (``SeededSamples.to_device``: taking the batch from the workers, JPEG decoding, resize,
normalisation) runs in the training process. In line, it adds to each step's host time, and torchvision's CUDA
decoder returns only once the GPU has decoded the batch, so the training process waits for it. :class:`DeviceAhead`
takes batch N+1 from the workers and decodes it in a thread (``SeededSamples.start_on_device``) while the training
loop resizes batch N (``finish_on_device``) and trains on it: the decoder and the loader's queue release the GIL
while they wait, so the two overlap. The thread queues its kernels on the stream the training loop uses, so a batch's
tensors are ready in stream order when the loop reads them. Results are those of the in-line device stage (which
draws no random numbers: the workers drew every crop and flip).

Only with loader workers: without them, drawing a batch runs the augmentation in the training process, which saves
and restores the global random streams around each sample, and that must not race with the training loop.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator

import torch

from openmae.data.loader import Batch, SeededSamples

_END = object()  # the loader is exhausted
_POLL_S = 0.1  # how often a waiting thread checks whether the loop has stopped


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class DeviceAhead:
    """An iterator of batches finished on ``device``, ``depth`` of them taken and decoded ahead by a thread; a
    context manager (or ``close()``) stops the thread when the loop ends early."""

    def __init__(self, batches: Iterator[Batch], dataset: SeededSamples, device: torch.device, depth: int = 1) -> None:
        self._dataset, self._device = dataset, device
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        stream = torch.cuda.current_stream(device) if device.type == "cuda" else None  # the training loop's
        self._thread = threading.Thread(target=self._run, args=(batches, stream), daemon=True,
                                        name="openmae-device-ahead")
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, batches: Iterator[Batch], stream: torch.cuda.Stream | None) -> None:
        context = torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
        try:
            with context:
                for batch in batches:
                    if not self._put(self._dataset.start_on_device(batch, self._device)):
                        return
            self._put(_END)
        except BaseException as err:  # handed to the training loop, which raises it at that batch
            self._put(_Failure(err))

    def __iter__(self) -> DeviceAhead:
        return self

    def __next__(self) -> Batch:
        item = self._queue.get()
        if item is _END or isinstance(item, _Failure):
            self._queue.put(item)  # the thread has ended: asked again, the same answer
            if isinstance(item, _Failure):
                raise item.error
            raise StopIteration
        return self._dataset.finish_on_device(item, self._device)

    def close(self, timeout: float = 10.0) -> None:
        """Stop preparing batches: the thread ends after the batch it is on (it is a daemon: it never holds up the
        process's exit)."""
        self._stop.set()
        self._thread.join(timeout)

    def __enter__(self) -> DeviceAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
