"""Handing memory back to the operating system while a run goes on.

Two kinds of memory stay in a process's resident set after nothing uses them,
and both dominate the peak of `edgekeras run`:

- Heap pages that glibc's `malloc` keeps for reuse. TensorFlow's CPU tensors
  and oneDNN's buffers come from `malloc`; `return_freed_heap` hands the free
  ones back (`malloc_trim`).
- Pages of a memory-mapped file that were read once. Cached activations are
  memory-mapped (GBs for the default recipe); every page an epoch touches
  stays counted until the mapping goes, although the kernel could read it
  again from the page cache. `release_mapped_pages` drops them from the
  process; the next read maps them again.

The opposite holds inside a stage: freed blocks should be reused, not handed
back. By default glibc serves large blocks with a fresh `mmap` and unmaps them
on `free`, or trims the heap's top once enough of it is free; which of the two
depends on the heap's layout. Either way the buffers TensorFlow frees every
training step go back to the kernel, and every 4 KiB page of the next step's
buffers faults again. `keep_freed_heap_for_reuse` makes `malloc` keep and
reuse them; `return_freed_heap` between stages still hands the kept blocks
back. Kept blocks are reused only within their arena, and glibc gives
TensorFlow's threads up to 8 arenas per core, so the setting also makes every
thread share one. `benchmarks/allocator.py` measures both settings.

None of this changes a value, and each does nothing where it cannot apply
(no glibc, an array that is not memory-mapped). No TensorFlow here.
"""

import ctypes
import ctypes.util
import gc
import mmap

import numpy as np

__all__ = ["keep_freed_heap_for_reuse", "return_freed_heap", "release_mapped_pages"]

_LIBC = []
# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def _glibc():
    """The C library if it is glibc (it has `malloc_trim` and `mallopt`), else None."""
    if not _LIBC:
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name) if name else None
            if libc is not None:
                libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
                libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        except (OSError, AttributeError):
            libc = None
        _LIBC.append(libc)
    return _LIBC[0]


def keep_freed_heap_for_reuse():
    """Makes glibc's `malloc` reuse freed blocks of every size for the rest of the process.

    Blocks are no longer `mmap`ed one by one (which faults their pages in
    at each use and unmaps them at each `free`), and freed memory is not
    handed back by `free` itself: call `return_freed_heap` when a phase that
    needed it is over. `edgekeras run`, `tune` and `train` call this first.

    Returns:
        True if glibc took both settings, False elsewhere (nothing changed).

    Example:

    ```python
    keep_freed_heap_for_reuse()
    model.fit(data, epochs=6)
    del model
    return_freed_heap()
    ```
    """
    libc = _glibc()
    if libc is None:
        return False
    # One arena: each arena keeps its own freed blocks, and TensorFlow's
    # threads would otherwise get up to 8 per core (14 after one small fit).
    # glibc fixes the limit when the ninth arena is due, so this holds if it
    # runs before then; arenas that already exist stay.
    return (
        bool(libc.mallopt(_M_MMAP_MAX, 0))
        and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
        and bool(libc.mallopt(_M_ARENA_MAX, 1))
    )


def return_freed_heap():
    """Collects garbage, then returns the heap's free pages to the system.

    Call it after a large object graph is dropped (a trained model, a
    converter's buffers): Python's collector frees the objects, and glibc's
    `malloc_trim(0)` unmaps the free pages of every arena, which `free`
    alone keeps.

    Returns:
        True if the heap was trimmed (glibc), False where `malloc_trim` does
        not exist; the garbage is collected either way.

    Example:

    ```python
    del model
    return_freed_heap()
    ```
    """
    gc.collect()
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def _mapping(array):
    """The `mmap.mmap` under a memory-mapped array (or a view of one), else None."""
    while array is not None:
        mapping = getattr(array, "_mmap", None)
        if isinstance(mapping, mmap.mmap):
            return mapping
        array = getattr(array, "base", None)
        if isinstance(array, mmap.mmap):
            return array
    return None


def release_mapped_pages(array):
    """Drops the resident pages of a memory-mapped array from this process.

    The values stay as they are: the file is read-only and the next access
    maps its pages again (from the page cache, usually). Only the process's
    resident set shrinks.

    Args:
        array: an array from `np.load(..., mmap_mode="r")` or `np.memmap`,
            or a view of one. Any other array is left alone, and so is a
            copy-on-write mapping (mode "c"), whose changes live only in
            its pages.

    Returns:
        True if pages were released, False if `array` is not memory-mapped
        (or copy-on-write), or the platform has no `madvise(MADV_DONTNEED)`.

    Example:

    ```python
    features = np.load("cache/train_features.npy", mmap_mode="r")
    total = features.sum()           # every page is now resident
    release_mapped_pages(features)   # and now none is
    ```
    """
    if not isinstance(array, np.ndarray) or getattr(array, "mode", None) == "c":
        return False
    mapping = _mapping(array)
    if mapping is None or not hasattr(mapping, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return False
    if mapping.closed:
        return False
    mapping.madvise(mmap.MADV_DONTNEED)
    return True
