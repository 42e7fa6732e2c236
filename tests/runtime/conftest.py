"""A tiny trained colour classifier as float32 and int8 .tflite files, and a folder of its images."""

import numpy as np
import pytest

COLOURS = ("blue", "green", "red")  # sorted: the folder order is the class order
SIDE = 16


def colour_images(count, seed=0):
    """uint8 images whose dominant channel is the class (red 0... in RGB order: class c -> channel 2 - c)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % len(COLOURS)
    images = rng.integers(0, 60, (count, SIDE, SIDE, 3), dtype=np.uint8)
    for index, label in enumerate(labels):
        images[index, ..., 2 - label] += 180
    return images, labels


@pytest.fixture(scope="session")
def colour_models(tmp_path_factory):
    """{"float32": path, "int8": path} of a small conv net trained on `colour_images` ([-1, 1] inputs)."""
    import tensorflow as tf

    from edgekeras.compat import keras

    keras.utils.set_random_seed(0)
    images, labels = colour_images(240)
    x = images.astype(np.float32) / 127.5 - 1.0
    model = keras.Sequential(
        [
            keras.Input((SIDE, SIDE, 3), name="image"),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(len(COLOURS), activation="softmax"),
        ]
    )
    model.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy", ["accuracy"])
    model.fit(x, labels, epochs=15, batch_size=32, verbose=0)
    directory = tmp_path_factory.mktemp("colour_models")
    paths = {}
    for name in ("float32", "int8"):
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        if name == "int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: ([x[i : i + 1]] for i in range(64))
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        paths[name] = directory / f"{name}.tflite"
        paths[name].write_bytes(converter.convert())
    return paths


@pytest.fixture(scope="session")
def colour_folder(tmp_path_factory):
    """A class-per-folder directory of 24x24 PNGs (resized to 16 by the evaluator)."""
    from PIL import Image

    directory = tmp_path_factory.mktemp("colour_folder")
    rng = np.random.default_rng(5)
    for index in range(30):
        label = index % len(COLOURS)
        image = rng.integers(0, 60, (24, 24, 3), dtype=np.uint8)
        image[..., 2 - label] += 180
        (directory / COLOURS[label]).mkdir(exist_ok=True)
        Image.fromarray(image).save(directory / COLOURS[label] / f"{index}.png")
    return directory
