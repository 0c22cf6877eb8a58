"""Training batches of host-resident data read ahead on a background thread.

When a training split stays in host memory (too large for the device, a memory-mapped
``npy_dir``, or ``resident = "no"``), every step gathers its batch's rows, and on CUDA pins them
and copies them to the device. Done inside the step, that host work and the copy stall the GPU
between steps. :class:`BatchReader` does it for the batches still to come, on a thread of its
own, while the current step runs: rows gathered in sorted order (sequential reads on a
memory-mapped file) straight into a pinned buffer, copied with ``non_blocking`` on a side CUDA
stream; the step's stream waits on the copy's event, and the tensors are recorded on that
stream so their memory is not reused before the step is done with them.

The reader follows the engine's seeded order: it is handed each epoch's order before the first
step (:meth:`BatchReader.start`) and yields the batches in that order, with the rows of a batch
sorted exactly as the unprefetched path reads them, so the numbers are the same to the bit. The
queue holds at most ``depth`` batches (host and device memory stay bounded), and
:meth:`BatchReader.stop` ends the thread promptly whatever it is doing: after an exception in a
step, a timeout between steps, or the end of training.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

import numpy as np
import torch

#: Seconds a blocked put or get waits before it looks again at the stop flag.
_POLL_S = 0.05


class BatchReader:
    """Reads the batches of one epoch at a time ahead of the steps (see the module docstring).

    Parameters
    ----------
    x, y
        Host arrays (memory-mapped ones included) of the training split; rows are batches' rows.
    device
        Where the batches go ("cpu": the thread only gathers them).
    depth
        Batches read ahead at most (>= 1).
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, device: str, depth: int = 2):
        if depth < 1:
            raise ValueError(f"depth={depth}: the reader needs at least 1 batch of queue; "
                             "use no reader to read in the step")
        self.x, self.y = x, y
        self.device = torch.device(device)
        self.depth = depth
        self._cuda = self.device.type == "cuda"
        if self._cuda and self.device.index is None:  # the thread sets it: an index is needed
            self.device = torch.device("cuda", torch.cuda.current_device())
        self._side = torch.cuda.Stream(self.device) if self._cuda else None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._left = 0

    @property
    def running(self) -> bool:
        """Whether the reader's thread is alive (tests; logs)."""
        return self._thread is not None and self._thread.is_alive()

    def start(self, order: torch.Tensor, batch: int) -> None:
        """Read the batches ``order[i:i + batch]`` of this epoch from now on (CPU ``order``)."""
        self.stop()
        order = order.cpu()
        self._stop = threading.Event()
        self._queue = queue.Queue(maxsize=self.depth)
        self._left = (len(order) + batch - 1) // batch
        self._thread = threading.Thread(target=self._run, args=(order, batch, self._stop,
                                                                self._queue),
                                        name="genodl-batch-reader", daemon=True)
        self._thread.start()

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch ``(x, y)`` on the device, ready for the current stream to use.

        Raises
        ------
        RuntimeError
            No epoch was started, or all its batches were taken already.
        BaseException
            Whatever the reader's thread raised while reading this batch.
        """
        if self._left <= 0 or self._thread is None:
            raise RuntimeError("the batch reader has no batch left: start() it with the "
                               "epoch's order before the epoch's first step")
        while True:
            try:
                item = self._queue.get(timeout=_POLL_S)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError("the batch reader's thread ended without a batch")
        self._left -= 1
        if isinstance(item, BaseException):
            self.stop()
            raise item
        x, y, event = item
        if event is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(event)
            # Allocated on the side stream: keep the memory until this stream has used it.
            x.record_stream(stream)
            y.record_stream(stream)
        return x, y

    def stop(self) -> None:
        """End the thread (waits for it) and drop what it read; safe to call again."""
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        thread.join()
        self._thread = None
        self._left = 0
        while not self._queue.empty():
            self._queue.get_nowait()

    def _run(self, order: torch.Tensor, batch: int, stop: threading.Event,
             out: queue.Queue) -> None:
        try:
            if self._cuda:
                torch.cuda.set_device(self.device)
            for start in range(0, len(order), batch):
                if stop.is_set():
                    return
                if not _put(out, self._read(order[start:start + batch]), stop):
                    return
        except BaseException as err:  # noqa: BLE001 - handed to the step that needs the batch
            _put(out, err, stop)

    def _read(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Any]:
        rows = np.sort(idx.numpy())  # sorted reads, as the step without a reader does
        x = _gather(self.x, rows, self._cuda)
        y = _gather(self.y, rows, self._cuda)
        if not self._cuda:
            return x, y, None
        with torch.cuda.stream(self._side):
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self._side)
        return x, y, event


def _gather(a: np.ndarray, rows: np.ndarray, pinned: bool) -> torch.Tensor:
    """Rows of ``a`` as one contiguous tensor, written straight into pinned memory on CUDA."""
    dtype = torch.from_numpy(np.empty(0, dtype=a.dtype)).dtype
    out = torch.empty((len(rows), *a.shape[1:]), dtype=dtype, pin_memory=pinned)
    np.take(a, rows, axis=0, out=out.numpy())
    return out


def _put(out: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Put ``item`` unless a stop comes first; whether it was put."""
    while not stop.is_set():
        try:
            out.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


__all__ = ["BatchReader"]
