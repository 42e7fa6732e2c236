"""Handing memory back to the operating system while a run goes on.

Two kinds of memory stay in a process's resident set after nothing uses them,
and both dominated the peak of `edgekeras run` (benchmarks/peak_memory.py):

- Heap pages that glibc's `malloc` keeps for reuse. TensorFlow's CPU tensors
  and oneDNN's buffers come from `malloc`; after a QAT fit of MobileNetV2 at
  128 px, 2.4 GiB stayed resident once the model was deleted and collected,
  and `malloc_trim` gave 1.85 GiB of it back. `return_freed_heap` does that.
- Pages of a memory-mapped file that were read once. Cached activations are
  memory-mapped (GBs for the default recipe); every page an epoch touches
  stays counted until the mapping goes, although the kernel could read it
  again from the page cache. `release_mapped_pages` drops them from the
  process; the next read maps them again.

Neither changes a value, and both do nothing where they cannot apply (no
glibc, an array that is not memory-mapped). No TensorFlow here.
"""

import ctypes
import ctypes.util
import gc
import mmap

import numpy as np

__all__ = ["return_freed_heap", "release_mapped_pages"]

_LIBC = []


def _glibc_malloc_trim():
    """glibc's `malloc_trim`, or None (another C library, or no C library found)."""
    if not _LIBC:
        name = ctypes.util.find_library("c")
        try:
            trim = ctypes.CDLL(name).malloc_trim if name else None
        except (OSError, AttributeError):
            trim = None
        if trim is not None:
            trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
        _LIBC.append(trim)
    return _LIBC[0]


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
    trim = _glibc_malloc_trim()
    if trim is None:
        return False
    trim(0)
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
