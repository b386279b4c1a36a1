"""Worker processes that hash, load and prepare images a few batches ahead of the model (for the embedding store).

Why processes and not a thread: :func:`~sameid.images.load_image` on a small PNG is mostly Python (PIL's plugin
code), so a decode thread holds the GIL most of the time, and every torch op of the model, which releases the GIL,
then waits for it back; measured on ``benchmarks/bench_eval.py``, a thread made the run no faster than decoding
in line. Each worker gets every ``workers``-th chunk of paths, and for each chunk sends back the content digest
of every file, which of them hold content not seen before (neither in ``known`` nor earlier in this worker: a
file already embedded or cached is never decoded), and those images loaded and passed through ``prepare``. A prepared array travels through a shared-memory slot (an
anonymous shared mapping, so no ``/dev/shm`` size limit and nothing to clean up if the process dies) and only
its shape goes through the pipe; a worker has ``SLOTS`` of them, so it runs up to that many chunks ahead and
waits for the consumer to release one. Anything else (a list of PIL images, an array of another size, or a
start method other than fork, which cannot share an anonymous mapping) is pickled through the pipe.
"""

from __future__ import annotations

import mmap
import multiprocessing
import pickle
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ImageError
from ..images import load_image

SLOTS = 3


@dataclass
class DecodedChunk:
    """One chunk of paths: ``digests`` of all, ``loaded`` (indexes into the chunk) of the new contents, ``batch``
    what ``prepare`` made of their images (or the images). ``batch`` may live in shared memory: call
    ``release()`` once it is no longer needed, after which it must not be read."""

    digests: list[str]
    loaded: list[int]
    batch: Any
    release: Callable[[], None]


def _fail(results, error: BaseException) -> None:
    if isinstance(error, ImageError):  # its reason code does not survive pickling
        results.send(("image error", error.reason, error.detail))
        return
    try:
        results.send(("error", pickle.loads(pickle.dumps(error))))
    except Exception:  # noqa: BLE001 - an exception that cannot be pickled travels as text
        results.send(("error", RuntimeError(f"{type(error).__name__}: {error}")))


def _work(chunks: list[list[str]], digest, known: frozenset[str], prepare, results, free, memory,
          slot_bytes: int) -> None:
    """A worker process's whole life: every chunk in order, then exit."""
    seen: set[str] = set()
    free_slots = list(range(SLOTS)) if memory is not None else []
    try:
        for chunk in chunks:
            digests = [digest(path) for path in chunk]
            loaded = []
            for index, content in enumerate(digests):
                if content not in known and content not in seen:
                    seen.add(content)
                    loaded.append(index)
            images = [load_image(chunk[index])[0] for index in loaded]
            batch = prepare(images) if prepare is not None and images else images
            if memory is not None and isinstance(batch, np.ndarray) and 0 < batch.nbytes <= slot_bytes:
                if not free_slots:
                    free_slots.append(free.recv())  # the consumer is SLOTS chunks behind: wait for it
                slot = free_slots.pop()
                np.copyto(np.ndarray(batch.shape, batch.dtype, buffer=memory, offset=slot * slot_bytes), batch)
                results.send(("slot", digests, loaded, slot, batch.shape, batch.dtype.str))
            else:
                results.send(("inline", digests, loaded, batch))
    except BaseException as error:  # noqa: BLE001 - every failure is reported to the consumer, which raises it
        _fail(results, error)
    finally:
        results.close()


class _Worker:
    def __init__(self, context, chunks: list[list[str]], digest, known: frozenset[str], prepare,
                 slot_bytes: int | None):
        self.memory = mmap.mmap(-1, SLOTS * slot_bytes) if slot_bytes else None
        self.slot_bytes = slot_bytes or 0
        self.results, results_end = context.Pipe(duplex=False)
        free_end, self.free = context.Pipe(duplex=False)
        self.process = context.Process(target=_work, daemon=True, name="sameid-decode",
                                       args=(chunks, digest, known, prepare, results_end, free_end, self.memory,
                                             self.slot_bytes))
        self.process.start()
        results_end.close()  # the worker's ends: closing ours lets recv() see the worker's exit as EOF
        free_end.close()

    def next(self) -> DecodedChunk:
        try:
            message = self.results.recv()
        except EOFError:
            raise RuntimeError(f"image decode worker exited unexpectedly (exit code {self.process.exitcode}); "
                               "rerun with decode_workers=0 to load images in this process") from None
        kind = message[0]
        if kind == "image error":
            raise ImageError(message[1], message[2])
        if kind == "error":
            raise message[1]
        if kind == "inline":
            return DecodedChunk(message[1], message[2], message[3], lambda: None)
        _, digests, loaded, slot, shape, dtype = message
        batch = np.ndarray(shape, np.dtype(dtype), buffer=self.memory, offset=slot * self.slot_bytes)
        released = []

        def release() -> None:
            if not released:
                released.append(True)
                try:
                    self.free.send(slot)
                except BrokenPipeError:  # the worker has sent its last chunk and exited
                    pass

        return DecodedChunk(digests, loaded, batch, release)

    def close(self) -> None:
        if self.process.is_alive():
            self.process.terminate()  # stopped early (an error here): it may be waiting for a free slot
        self.process.join()
        self.results.close()
        self.free.close()
        if self.memory is not None:
            try:
                self.memory.close()
            except BufferError:  # a batch view is still referenced; the mapping goes with its last view
                pass


class DecodeWorkers:
    """``with DecodeWorkers(chunks, ...) as decoded: for chunk in decoded: ...`` yields one
    :class:`DecodedChunk` per chunk of paths, in order. ``digest(path) -> str`` keys a file's content (a
    module-level function: it is pickled under the spawn start method); ``slot_bytes``: the largest prepared array
    that travels through shared memory (None: everything is pickled through the pipe)."""

    def __init__(self, chunks: Sequence[list[str]], *, digest: Callable[[str], str], workers: int,
                 known: frozenset[str], prepare: Callable[[list], Any] | None = None, slot_bytes: int | None = None):
        self.chunks = list(chunks)
        self.count = max(1, min(int(workers), len(self.chunks)))
        self.context = multiprocessing.get_context()
        # an anonymous shared mapping reaches the worker only through fork
        self.slot_bytes = slot_bytes if self.context.get_start_method() == "fork" else None
        self.digest, self.known, self.prepare = digest, known, prepare
        self.workers: list[_Worker] = []

    def __enter__(self) -> DecodeWorkers:
        for index in range(self.count):
            self.workers.append(_Worker(self.context, self.chunks[index::self.count], self.digest, self.known,
                                        self.prepare, self.slot_bytes))
        return self

    def __iter__(self) -> Iterator[DecodedChunk]:
        for index in range(len(self.chunks)):
            yield self.workers[index % self.count].next()

    def __exit__(self, *exc_info) -> None:
        for worker in self.workers:
            worker.close()
