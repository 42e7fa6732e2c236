"""Accuracy of a .tflite file on a folder of labelled images, on the device itself.

No TensorFlow: the images are read and scaled by `edgekeras.runtime.images`
(as the training pipeline did) and run by the LiteRT interpreter. This is
what `edgekeras evaluate model.tflite --images DIR` prints.

Example:

```python
from edgekeras.runtime.evaluate import evaluate_folder
result = evaluate_folder("model.tflite", "photos/", normalization="minus_one_to_one")
print(result.accuracy, result.per_class)
```
"""

import dataclasses
import time

import numpy as np

from edgekeras.arguments import check_positive_int
from edgekeras.runtime.images import image_folder, normalize
from edgekeras.runtime.model import TFLiteModel

__all__ = ["FolderAccuracy", "evaluate_folder"]


@dataclasses.dataclass
class FolderAccuracy:
    """Top-1 accuracy on an image folder.

    Attributes:
        path: the model file.
        images: the folder.
        accuracy: correct / examples, in [0, 1].
        correct, examples: counts.
        per_class: {class name: accuracy} for the classes present.
        seconds: wall time, decoding included.
    """

    path: str
    images: str
    accuracy: float
    correct: int
    examples: int
    per_class: dict
    seconds: float

    def to_dict(self):
        """The fields as a JSON-able dict."""
        return dataclasses.asdict(self)


def evaluate_folder(model, images, *, normalization="minus_one_to_one", class_names=None, batch_size=32, num_threads=None):
    """Top-1 accuracy of `model` on `images` (one sub-folder per class).

    Args:
        model: path of a single-input image classifier .tflite file.
        images: the folder; class ids follow the sorted sub-folder names
            unless `class_names` gives the model's order.
        normalization: how the model was trained to see pixels (one of
            `edgekeras.choices.NORMALIZATIONS`; edgekeras runs write it in
            their config.toml).
        class_names: the model's class names in id order (optional).
        batch_size: images per interpreter call.
        num_threads: interpreter threads (None: LiteRT's default).

    Returns:
        A `FolderAccuracy`.

    Raises:
        ImageFolderReadError: a bad folder or an unreadable image.
        ValueError: bad arguments, or more classes than the model has outputs.

    Example:

    ```python
    evaluate_folder("int8.tflite", "photos/", normalization="pixels").accuracy
    ```
    """
    check_positive_int(batch_size, "batch_size")
    normalize(np.zeros(3), normalization)  # rejects an unknown name before any decoding
    runner = TFLiteModel(model, num_threads)
    shape = runner.input_shape
    if len(runner.input_shapes) != 1 or len(shape) != 4 or shape[1] != shape[2]:
        raise ValueError(
            f"Argument `model` must be a single-input classifier of square images. Received: inputs "
            f"{runner.input_shapes}. Evaluate other models from Python with edgekeras.runtime.TFLiteModel."
        )
    folder = image_folder(images, shape[1], class_names)
    started = time.perf_counter()
    predictions = []
    for batch, _ in folder.batches(batch_size, normalization):
        outputs = runner.predict(batch, batch_size=batch_size)
        if outputs.shape[-1] < len(folder.class_names):
            raise ValueError(
                f"Argument `images` has {len(folder.class_names)} classes but the model has {outputs.shape[-1]} outputs. "
                f"Received: images={images!r}. Pass the model's class names (--class-names) or remove extra folders."
            )
        predictions.append(np.argmax(outputs, axis=-1))
    predicted = np.concatenate(predictions)
    hits = predicted == folder.labels
    per_class = {
        name: float(hits[folder.labels == index].mean())
        for index, name in enumerate(folder.class_names)
        if np.any(folder.labels == index)
    }
    return FolderAccuracy(
        path=str(model),
        images=str(images),
        accuracy=float(hits.mean()),
        correct=int(hits.sum()),
        examples=int(hits.size),
        per_class=per_class,
        seconds=round(time.perf_counter() - started, 3),
    )
