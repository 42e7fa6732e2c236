"""Tests for edgekeras.memory: freed heap and read cache pages go back to the system."""

import ctypes
import ctypes.util
import sys

import numpy as np
import pytest

from edgekeras.memory import release_mapped_pages, return_freed_heap

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self (Linux)")
ROW_BYTES = 16 * 1024  # one default-recipe activation in float16: 16x16x32


def _mapped_kib(path):
    """Resident KiB of this process's mappings of `path`, from /proc/self/smaps."""
    total, inside = 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5:
                inside = len(fields) >= 6 and fields[5] == str(path)
            elif inside and fields[0] == "Rss:":
                total += int(fields[1])
    return total


def _anonymous_kib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise AssertionError("no RssAnon line in /proc/self/status")


@pytest.fixture
def cache_file(tmp_path):
    """A 32 MiB .npy of 2,048 rows of 16 KiB, like a small activation cache."""
    path = tmp_path / "features.npy"
    rows = np.arange(2048, dtype=np.float16).reshape(-1, 1) * np.ones((1, ROW_BYTES // 2), np.float16)
    np.save(path, rows)
    return path


@linux_only
def test_release_mapped_pages_empties_the_resident_set_and_keeps_the_values(cache_file):
    features = np.load(cache_file, mmap_mode="r")
    expected = float(features[:, 0].astype(np.float64).sum())
    assert _mapped_kib(cache_file) > 30 * 1024  # every row was read: all 32 MiB resident

    assert release_mapped_pages(features) is True
    assert _mapped_kib(cache_file) < 1024
    assert float(features[:, 0].astype(np.float64).sum()) == expected


@linux_only
def test_release_mapped_pages_reaches_the_mapping_through_a_view(cache_file):
    features = np.load(cache_file, mmap_mode="r")
    features.sum(dtype=np.float64)
    assert release_mapped_pages(features[100:200]) is True
    assert _mapped_kib(cache_file) < 1024


@pytest.mark.parametrize("array", [np.zeros((4, 3)), np.zeros((4, 3))[1:], [1, 2, 3], None])
def test_release_mapped_pages_leaves_other_arrays_alone(array):
    before = None if array is None else np.array(array, copy=True)
    assert release_mapped_pages(array) is False
    if before is not None:
        np.testing.assert_array_equal(np.asarray(array), before)


def test_release_mapped_pages_keeps_a_copy_on_write_mapping(cache_file):
    # Its changes live only in its pages: releasing them would undo the changes.
    features = np.load(cache_file, mmap_mode="c")
    features[0, 0] = 7.0
    assert release_mapped_pages(features) is False
    assert features[0, 0] == 7.0


@linux_only
def test_array_dataset_keeps_a_memory_mapped_cache_from_staying_resident(cache_file):
    from edgekeras.features import array_dataset

    features = np.load(cache_file, mmap_mode="r")
    labels = np.zeros(len(features), np.int64)
    batch_size = 16
    seen = 0
    for batch, _ in array_dataset(features, labels, batch_size, shuffle_seed=0):
        seen += len(batch)
    assert seen == len(features)
    # Without the releases all 32 MiB would be resident now.
    assert _mapped_kib(cache_file) < 1024


@linux_only
@pytest.mark.skipif(ctypes.util.find_library("c") is None, reason="no C library to allocate from")
def test_return_freed_heap_gives_back_freed_pages_in_the_middle_of_the_heap():
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    if not hasattr(libc, "malloc_trim"):
        pytest.skip("not glibc: malloc_trim does not exist")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    # 64 MiB in blocks below malloc's mmap threshold, so they come from the
    # heap; the last block stays allocated, which keeps `free` from shrinking
    # the heap by itself.
    blocks = [libc.malloc(4096) for _ in range(16384)]
    assert all(blocks)
    for block in blocks:
        ctypes.memset(block, 1, 4096)
    keep = libc.malloc(4096)
    for block in blocks:
        libc.free(block)
    before = _anonymous_kib()
    try:
        assert return_freed_heap() is True
        assert _anonymous_kib() < before - 32 * 1024
    finally:
        libc.free(keep)


def test_return_freed_heap_collects_garbage_everywhere():
    import gc

    class Cycle:
        pass

    cycle = Cycle()
    cycle.self = cycle
    del cycle
    return_freed_heap()
    assert not [obj for obj in gc.get_objects() if type(obj) is Cycle]


@linux_only
def test_teacher_outputs_over_a_memory_mapped_cache_leave_it_unresident(cache_file):
    from edgekeras.compat import keras
    from edgekeras.distillation import teacher_outputs

    features = np.load(cache_file, mmap_mode="r")
    teacher = keras.Sequential([keras.Input((ROW_BYTES // 2,)), keras.layers.Dense(3, activation="softmax")])
    outputs = teacher_outputs(teacher, features, batch_size=256)
    assert outputs.shape == (len(features), 3)
    assert _mapped_kib(cache_file) < 1024


KEEP_SCRIPT = """
import ctypes, ctypes.util, sys
from edgekeras.memory import keep_freed_heap_for_reuse, return_freed_heap

def anonymous_mib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) // 1024 for line in status if line.startswith("RssAnon:"))

if sys.argv[1] == "keep":
    assert keep_freed_heap_for_reuse() is True
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
before = anonymous_mib()
block = libc.malloc(64 << 20)
ctypes.memset(block, 1, 64 << 20)
libc.free(block)
after_free = anonymous_mib()
return_freed_heap()
print(after_free - before, anonymous_mib() - before)
"""


@linux_only
@pytest.mark.parametrize("mode, kept_after_free", [("keep", True), ("default", False)])
def test_keep_freed_heap_for_reuse_holds_a_large_freed_block_until_return_freed_heap(mode, kept_after_free):
    # In a process of its own: the setting lasts for the rest of the process.
    import subprocess

    libc = ctypes.util.find_library("c")
    if libc is None or not hasattr(ctypes.CDLL(libc), "mallopt"):
        pytest.skip("not glibc")
    result = subprocess.run([sys.executable, "-c", KEEP_SCRIPT, mode], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    after_free, after_return = map(int, result.stdout.split())
    # Without the setting glibc maps a 64 MiB block on its own and unmaps it at `free`.
    assert (after_free >= 60) is kept_after_free
    assert after_return < 8


ARENA_SCRIPT = """
import ctypes, ctypes.util, os, sys, tempfile, threading
from edgekeras.memory import keep_freed_heap_for_reuse

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.fopen.restype, libc.fopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_char_p]
libc.fclose.argtypes = [ctypes.c_void_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]

if sys.argv[1] == "keep":
    assert keep_freed_heap_for_reuse() is True
barrier = threading.Barrier(8)

def allocate():
    block = libc.malloc(1 << 20)
    barrier.wait()  # all eight alive at once, so none inherits another's arena
    libc.free(block)

threads = [threading.Thread(target=allocate) for _ in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
path = os.path.join(tempfile.mkdtemp(), "malloc_info.xml")
stream = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, stream)
libc.fclose(stream)
print(open(path).read().count("<heap nr="))
"""


@linux_only
@pytest.mark.parametrize("mode", ["keep", "default"])
def test_keep_freed_heap_for_reuse_makes_every_thread_share_one_arena(mode):
    # Each arena keeps its own freed blocks; glibc gives threads up to 8 arenas per core.
    import subprocess

    libc = ctypes.util.find_library("c")
    if libc is None or not hasattr(ctypes.CDLL(libc), "malloc_info"):
        pytest.skip("not glibc")
    result = subprocess.run([sys.executable, "-c", ARENA_SCRIPT, mode], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    arenas = int(result.stdout.split()[-1])
    if mode == "keep":
        assert arenas == 1
    else:
        assert arenas > 1
