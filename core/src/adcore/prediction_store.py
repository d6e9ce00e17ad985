"""Where predictions go while a dataset is scored: memory for small runs, files for large ones.

``Engine.predict`` appends every batch to a :class:`PredictionStore`. Scores, labels, paths
and regions are small and always stay in memory. Anomaly maps and ground-truth masks are
the bulk (256 KB of float32 map per 256x256 image: 20,000 images are over 5 GB), so once
the maps and masks held pass ``spill_bytes`` (default 64 MB, environment variable
``ADCORE_SPILL_MB`` to change it) the store writes them to raw files in a temporary
directory and keeps appending there. Below the limit nothing changes: ``Predictions.maps``
is the same tensor it always was, and small runs cost nothing.

Spilled maps and masks are :class:`StoredArray` objects: ``[index]``, ``[a:b]``,
``[index, 0]``, ``[list of indices]``, ``.shape``, ``.dtype``, ``len`` and
:meth:`StoredArray.chunks` read only what is asked, with plain file reads
(``np.fromfile`` at an offset), so the page cache holds the file and the process's
resident memory does not grow with the number of images (a memory map would: its
file-backed pages count in RSS until they are dropped). The directory is removed when the
last array that reads it is garbage-collected, or at once by :meth:`PredictionStore.close`
/ ``Predictions.close``. It is created under ``directory`` (default: the system's temporary
folder, or ``ADCORE_SPILL_DIR``), never in a run's output folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

#: Bytes of maps and masks kept in memory before they go to files: about 200 images at 256x256
#: with masks. Small on purpose: whatever is held before the first spill is the step between the
#: peak memory of a small run and a large one (256 MB made it 17 % of a PaDiM test's peak).
DEFAULT_SPILL_BYTES = 64 * 1024 * 1024
#: Images per chunk when metrics, calibration or outputs walk spilled predictions.
DEFAULT_CHUNK_IMAGES = 64


def _libc_malloc_trim():
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to do
        return None


_MALLOC_TRIM = _libc_malloc_trim()


def release_free_memory() -> None:
    """Give freed heap memory back to the system (glibc ``malloc_trim``).

    Scoring allocates and frees a few-MB buffer per batch; glibc's dynamic mmap threshold moves
    those onto the heap, where they fragment, and the resident size then creeps up with the
    number of batches (measured: +850 MB over 4,000 spilled 256x256 images) although nothing is
    kept. Trimming every few dozen batches keeps it flat.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


#: Batches (or chunks) between two :func:`release_free_memory` calls once maps are spilled.
TRIM_EVERY = 16


def default_spill_bytes() -> int:
    """``ADCORE_SPILL_MB`` (megabytes, may be fractional; 0 spills from the first batch) or 64 MB."""
    value = os.environ.get("ADCORE_SPILL_MB")
    return DEFAULT_SPILL_BYTES if value in (None, "") else int(float(value) * 1024 * 1024)


class _SpillDirectory:
    """A temporary directory removed when closed or when nothing refers to it any more."""

    def __init__(self, parent: str | os.PathLike | None) -> None:
        parent = parent if parent is not None else os.environ.get("ADCORE_SPILL_DIR") or None
        self.path = Path(tempfile.mkdtemp(prefix="adcore-predictions-", dir=parent))
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.path), True)

    def close(self) -> None:
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive


class StoredArray:
    """A read-only (N, *item_shape) array in a raw file; indexing returns torch tensors.

    Only the first axis is read lazily; further indices (``[i, 0]``) apply to what was read.
    """

    def __init__(
        self, directory: _SpillDirectory, path: Path, item_shape: tuple[int, ...], file_dtype, dtype: torch.dtype
    ) -> None:
        self._directory = directory  # keeps the directory alive as long as this array
        self.path = path
        self.item_shape = tuple(item_shape)
        self.file_dtype = np.dtype(file_dtype)
        self.dtype = dtype  # what reads return (masks are stored as uint8, returned as float32)
        self._length = 0

    # -- writing (PredictionStore only) --------------------------------------------------------
    def _append(self, values: torch.Tensor) -> None:
        array = values.detach().cpu().numpy()
        if array.shape[1:] != self.item_shape:
            raise ValueError(f"cannot store items of shape {array.shape[1:]} with items of shape {self.item_shape}")
        if self.file_dtype == np.uint8 and array.dtype != np.uint8 and ((array != 0) & (array != 1)).any():
            raise ValueError("masks must be 0/1 to be stored on disk")
        with open(self.path, "ab") as handle:
            np.ascontiguousarray(array.astype(self.file_dtype, copy=False)).tofile(handle)
        self._length += array.shape[0]

    # -- reading -------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return (self._length, *self.item_shape)

    def __len__(self) -> int:
        return self._length

    @property
    def _item_count(self) -> int:
        return int(np.prod(self.item_shape, dtype=np.int64))

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Items ``start`` to ``stop`` (exclusive) in one file read."""
        start, stop = max(0, start), min(stop, self._length)
        count = max(0, stop - start)
        if self._directory.closed:
            raise RuntimeError("these predictions were closed: their maps and masks are gone")
        values = np.fromfile(
            self.path,
            dtype=self.file_dtype,
            count=count * self._item_count,
            offset=start * self._item_count * self.file_dtype.itemsize,
        )
        return torch.from_numpy(values.reshape(count, *self.item_shape)).to(self.dtype)

    def __getitem__(self, key) -> torch.Tensor:
        rest = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        if isinstance(key, (int, np.integer)) or (isinstance(key, torch.Tensor) and key.ndim == 0):
            index = int(key)
            index = index + self._length if index < 0 else index
            if not 0 <= index < self._length:
                raise IndexError(f"index {int(key)} out of range for {self._length} items")
            values = self.read(index, index + 1)[0]
        elif isinstance(key, slice):
            start, stop, step = key.indices(self._length)
            values = self.read(start, stop) if step == 1 else self[list(range(start, stop, step))]
        else:  # a list, array or tensor of indices, or a boolean mask
            indices = torch.as_tensor(np.asarray(key))
            if indices.dtype == torch.bool:
                indices = torch.nonzero(indices).flatten()
            items = [self[int(i)] for i in indices.flatten()]
            values = torch.stack(items) if items else self.read(0, 0)
        return values[rest] if rest else values

    def chunks(self, size: int = DEFAULT_CHUNK_IMAGES) -> Iterator[tuple[int, torch.Tensor]]:
        """``(start, items[start:start + size])`` over the whole array."""
        for number, start in enumerate(range(0, self._length, size)):
            if number % TRIM_EVERY == TRIM_EVERY - 1:
                release_free_memory()
            yield start, self.read(start, start + size)

    def to_tensor(self) -> torch.Tensor:
        """The whole array in memory (what spilling avoids: for small arrays and tests only)."""
        return self.read(0, self._length)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        """``torch.equal(stored, tensor)`` and other torch functions read the whole array first
        (compatibility for whole-array callers; loops over many images should use :meth:`chunks`)."""

        def load(value):
            if isinstance(value, StoredArray):
                return value.to_tensor()
            if isinstance(value, (list, tuple)):
                return type(value)(load(v) for v in value)
            return value

        return func(*load(args), **{k: load(v) for k, v in (kwargs or {}).items()})

    def __array__(self, dtype=None, copy=None):
        array = self.to_tensor().numpy()
        return array if dtype is None else array.astype(dtype)

    def __repr__(self) -> str:
        return f"StoredArray(shape={self.shape}, dtype={self.dtype}, path={str(self.path)!r})"


def chunks(values, size: int = DEFAULT_CHUNK_IMAGES) -> Iterator[tuple[int, torch.Tensor]]:
    """``(start, values[start:start + size])`` of a tensor or a :class:`StoredArray`."""
    if isinstance(values, StoredArray):
        yield from values.chunks(size)
        return
    for start in range(0, len(values), size):
        yield start, values[start : start + size]


def is_stored(values) -> bool:
    return isinstance(values, StoredArray)


def _is_binary(values: torch.Tensor) -> bool:
    return bool(((values == 0) | (values == 1)).all())


class _Column:
    """One of maps/masks: a list of batches in memory, then (after spilling) a StoredArray."""

    def __init__(self) -> None:
        self.batches: list[torch.Tensor] = []
        self.stored: StoredArray | None = None
        self.count = 0

    def append(self, values: torch.Tensor) -> None:
        self.count += values.shape[0]
        if self.stored is not None:
            self.stored._append(values)
        else:
            self.batches.append(values)

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.batches)

    def spill(self, directory: _SpillDirectory, name: str, is_mask: bool) -> None:
        if self.stored is not None or not self.batches:
            return
        first = self.batches[0]
        binary = is_mask and all(_is_binary(b) for b in self.batches)
        file_dtype = np.uint8 if binary else torch.empty((), dtype=first.dtype).numpy().dtype
        self.stored = StoredArray(
            directory, directory.path / f"{name}.bin", tuple(first.shape[1:]), file_dtype, first.dtype
        )
        for batch in self.batches:
            self.stored._append(batch)
        self.batches = []

    def result(self):
        if self.stored is not None:
            return self.stored
        return torch.cat(self.batches) if self.batches else None


class PredictionStore:
    """Collects predictions batch by batch; maps and masks go to files past ``spill_bytes``.

    ``spill_bytes=None`` reads :func:`default_spill_bytes`; ``0`` spills from the first batch.
    """

    def __init__(self, spill_bytes: int | None = None, directory: str | os.PathLike | None = None) -> None:
        self.spill_bytes = default_spill_bytes() if spill_bytes is None else int(spill_bytes)
        self._parent = directory
        self._directory: _SpillDirectory | None = None
        self.paths: list[str] = []
        self.scores: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.regions: list[torch.Tensor] = []
        self.maps = _Column()
        self.masks = _Column()
        self.batches = 0

    @property
    def spilled(self) -> bool:
        return self._directory is not None

    @property
    def directory(self) -> Path | None:
        return None if self._directory is None else self._directory.path

    def append(
        self,
        paths: list[str],
        scores: torch.Tensor,
        maps: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        regions: list[torch.Tensor] | None = None,
    ) -> None:
        """One batch (CPU tensors; maps (B, 1, H, W), masks likewise)."""
        self.batches += 1
        self.paths += list(paths)
        self.scores.append(scores)
        if labels is not None:
            self.labels.append(labels)
        if regions is not None:
            self.regions += list(regions)
        if maps is not None:
            self.maps.append(maps)
        if masks is not None:
            self.masks.append(masks)
        if self._directory is None and self.maps.nbytes + self.masks.nbytes > self.spill_bytes:
            self._directory = _SpillDirectory(self._parent)
            self.maps.spill(self._directory, "maps", is_mask=False)
            self.masks.spill(self._directory, "masks", is_mask=True)
        elif self._directory is not None:  # a column that started after spilling
            self.maps.spill(self._directory, "maps", is_mask=False)
            self.masks.spill(self._directory, "masks", is_mask=True)
            if self.batches % TRIM_EVERY == 0:
                release_free_memory()

    def finish(self, seconds: float = 0.0):
        """The :class:`~adcore.engine.Predictions` (maps/masks as tensors, or StoredArrays when spilled).

        Columns that not every batch had are dropped (None), as ``Engine.predict`` always did.
        """
        from adcore.engine import Predictions

        n = len(self.paths)
        maps = self.maps.result() if self.maps.count == n and n else None
        masks = self.masks.result() if self.masks.count == n and n else None
        labels = torch.cat(self.labels) if self.labels and sum(len(x) for x in self.labels) == n else None
        return Predictions(
            paths=self.paths,
            scores=torch.cat(self.scores) if self.scores else torch.zeros(0),
            maps=maps,
            labels=labels,
            masks=masks,
            seconds=seconds,
            regions=self.regions if len(self.regions) == n else None,
        )

    def close(self) -> None:
        """Remove the spilled files now (arrays read from them then fail)."""
        if self._directory is not None:
            self._directory.close()
