"""Latency and memory of a .tflite file on the machine it runs on (no TensorFlow).

`measure_latency` times batch-1 invocations of one interpreter;
`benchmark` does so for several thread counts and adds the process' memory:
resident set before the model is loaded, after it is loaded and run, and the
peak. This is what `edgekeras bench model.tflite` prints on a device.

Example:

```python
from edgekeras.runtime.bench import benchmark
result = benchmark("model.tflite", threads=(1, 2), runs=100)
print(result.latency[1].median_ms, result.memory["peak_rss_mib"])
```
"""

import dataclasses
import os
import resource
import sys
import time

import numpy as np

from edgekeras.runtime.model import TFLiteModel, check_threads

__all__ = ["Benchmark", "Latency", "benchmark", "measure_latency", "memory_mib"]


@dataclasses.dataclass
class Latency:
    """Batch-1 latency of one model with a given number of threads.

    Attributes:
        num_threads: interpreter threads.
        median_ms: median time of one invocation, in milliseconds.
        p90_ms: 90th percentile of the same.
        p99_ms: 99th percentile of the same.
        mean_ms, min_ms, max_ms: mean, fastest and slowest invocation.
        runs: timed invocations.
    """

    num_threads: int
    median_ms: float
    p90_ms: float
    runs: int
    p99_ms: float = 0.0
    mean_ms: float = 0.0
    min_ms: float = 0.0
    max_ms: float = 0.0


@dataclasses.dataclass
class Benchmark:
    """What `benchmark` measured.

    Attributes:
        path: the model file.
        size_bytes: its size.
        input_shapes, input_dtypes: the model's inputs (batch 1).
        latency: {num_threads: Latency}.
        memory: resident set sizes in MiB: "before_load", "after_run" and
            "peak_rss_mib" (the process' high-water mark).
    """

    path: str
    size_bytes: int
    input_shapes: list
    input_dtypes: list
    latency: dict
    memory: dict

    def to_dict(self):
        """The fields as a JSON-able dict (latency keyed by the thread count as a string)."""
        result = dataclasses.asdict(self)
        result["latency"] = {str(k): dataclasses.asdict(v) for k, v in self.latency.items()}
        return result


def memory_mib():
    """`(current, peak)` resident set size of this process in MiB (peak only, twice, off Linux)."""
    try:
        with open("/proc/self/status") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024
    except (OSError, KeyError, ValueError):
        # ru_maxrss is in KiB on Linux, in bytes on macOS.
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = peak / 2**20 if sys.platform == "darwin" else peak / 1024
        return peak, peak


def _check_count(value, argument, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive integer" if minimum == 1 else "a non-negative integer"
        raise ValueError(f"Argument `{argument}` must be {kind}. Received: {argument}={value!r}")


def _one_example(runner, image):
    if image is None:
        arrays = [np.zeros((1, *shape[1:]), np.float32) for shape in runner.input_shapes]
    elif isinstance(image, dict):
        arrays = {name: np.asarray(value)[None] for name, value in image.items()}
    elif isinstance(image, (list, tuple)):
        arrays = [np.asarray(value)[None] for value in image]
    else:
        arrays = [np.asarray(image)[None]]
    if isinstance(arrays, list) and len(arrays) == 1:
        arrays = arrays[0]
    return runner.quantize_input(arrays)


def measure_latency(model, *, num_threads=1, runs=50, warmup=10, image=None):
    """Latency percentiles of one batch-1 invocation.

    Args:
        model: a .tflite path or its bytes.
        num_threads: interpreter threads.
        runs: timed invocations (at least 50 for a stable p90).
        warmup: untimed invocations first (XNNPACK packs weights lazily).
        image: one float input (default: zeros), a list or dict of them for
            a model with several inputs; latency does not depend on the
            values for these models.

    Returns:
        A `Latency`.

    Example:

    ```python
    measure_latency("model.tflite", num_threads=2).median_ms
    ```
    """
    check_threads(num_threads)
    _check_count(runs, "runs", 1)
    _check_count(warmup, "warmup", 0)
    runner = model if isinstance(model, TFLiteModel) else TFLiteModel(model, num_threads)
    prepared = _one_example(runner, image)
    runner.allocate(1)
    for _ in range(warmup):
        runner.invoke_raw(prepared)
    times = np.empty(runs)
    for index in range(runs):
        start = time.perf_counter()
        runner.invoke_raw(prepared)
        times[index] = time.perf_counter() - start
    times *= 1000.0
    return Latency(
        num_threads=num_threads,
        median_ms=float(np.median(times)),
        p90_ms=float(np.percentile(times, 90)),
        p99_ms=float(np.percentile(times, 99)),
        mean_ms=float(times.mean()),
        min_ms=float(times.min()),
        max_ms=float(times.max()),
        runs=runs,
    )


def benchmark(model, *, threads=(1,), runs=100, warmup=10):
    """Latency for each thread count, and the memory the model costs this process.

    Args:
        model: path of a .tflite file.
        threads: interpreter thread counts to time.
        runs: timed batch-1 invocations per thread count.
        warmup: untimed invocations before them.

    Returns:
        A `Benchmark`.

    Raises:
        FileNotFoundError: no such file.
        TFLiteFileError: not a .tflite file.

    Example:

    ```python
    print(benchmark("model.tflite", threads=(1, 4)).to_dict())
    ```
    """
    threads = list(threads)
    if not threads:
        raise ValueError("Argument `threads` must name at least one thread count. Received: threads=[]")
    for count in threads:
        check_threads(count, "threads")
    _check_count(runs, "runs", 1)
    _check_count(warmup, "warmup", 0)
    before, _ = memory_mib()
    latency = {}
    for count in threads:
        runner = TFLiteModel(model, count)
        latency[count] = measure_latency(runner, num_threads=count, runs=runs, warmup=warmup)
    after, peak = memory_mib()
    return Benchmark(
        path=os.fspath(model),
        size_bytes=os.path.getsize(model),
        input_shapes=[[1, *shape[1:]] for shape in runner.input_shapes],
        input_dtypes=[dtype.name for dtype in runner.input_dtypes],
        latency=latency,
        memory={"before_load": round(before, 1), "after_run": round(after, 1), "peak_rss_mib": round(peak, 1)},
    )
