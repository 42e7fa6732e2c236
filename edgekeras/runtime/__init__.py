"""The device side: run, time and evaluate .tflite files with LiteRT and numpy only.

Nothing here imports TensorFlow (`tests/runtime/test_no_tensorflow.py` runs
it with TensorFlow made unimportable), so it works on a board or phone where
only `ai-edge-litert` and numpy are installed:

- `TFLiteModel` (model.py): a .tflite file that takes and returns floats;
- `benchmark`, `measure_latency` (bench.py): latency percentiles and memory;
- `evaluate_folder`, `image_folder` (evaluate.py, images.py): accuracy on a
  folder of labelled images, preprocessed as in training;
- `write_c_header` (c_array.py): the file as a C array for TFLite Micro.

Example:

```python
from edgekeras.runtime import TFLiteModel, benchmark
print(benchmark("model.tflite", threads=(1, 2)).latency[1].median_ms)
```
"""

from edgekeras.runtime.bench import Benchmark, Latency, benchmark, measure_latency, memory_mib
from edgekeras.runtime.c_array import c_header, write_c_header
from edgekeras.runtime.evaluate import FolderAccuracy, evaluate_folder
from edgekeras.runtime.images import ImageFolder, ImageFolderReadError, decode_image, image_folder
from edgekeras.runtime.model import TFLiteFileError, TFLiteModel, check_threads, check_tflite_bytes, progress_bar

__all__ = [
    "Benchmark",
    "FolderAccuracy",
    "ImageFolder",
    "ImageFolderReadError",
    "Latency",
    "TFLiteFileError",
    "TFLiteModel",
    "benchmark",
    "c_header",
    "check_threads",
    "check_tflite_bytes",
    "decode_image",
    "evaluate_folder",
    "image_folder",
    "measure_latency",
    "memory_mib",
    "progress_bar",
    "write_c_header",
]
