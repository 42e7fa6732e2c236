"""The [data] and [model] sections of `edgekeras run` and `edgekeras tune` configs: which images, which model.

[data] takes images from a TFDS dataset (`dataset`) or from a directory with
one sub-folder per class (`directory`); [model] builds a tf_keras.applications
backbone (`architecture`), calls a function of yours (`factory`) or loads a
model file (`file`). `input_normalization` says how the pixels are scaled:
the way the chosen architecture was trained, or as `data.normalization` says
for a model of yours. Like `edgekeras.app.sections`, nothing here imports
TensorFlow; `edgekeras.app.factories` turns the sections into data and models.

Example:

```python
from edgekeras.app.inputs import DataSection, ModelSection, input_normalization

model = ModelSection(architecture="resnet50")
model.check("model")
print(input_normalization(DataSection(), model))  # "caffe"
```
"""

import dataclasses
import math
import re

from edgekeras.app.sections import ConfigError, _at_least, _fail
from edgekeras.choices import ARCHITECTURE_NORMALIZATION, ARCHITECTURES, KERASES, NORMALIZATIONS

__all__ = ["DEFAULT_ARCHITECTURE", "DEFAULT_DATASET", "DataSection", "ModelSection", "check_inputs", "input_normalization"]

# What an empty `data.dataset` / `model.architecture` stands for when no
# directory / factory / file is given either.
DEFAULT_DATASET = "cifar10"
DEFAULT_ARCHITECTURE = "mobilenet_v2"
_FACTORY = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
_MODEL_SOURCES = ("architecture", "factory", "file")


def _one_source(obj, section, keys, what):
    given = [key for key in keys if getattr(obj, key)]
    if len(given) > 1:
        named = ", ".join(f"`{section}.{key}`" for key in keys)
        received = ", ".join(f"{section}.{key}={getattr(obj, key)!r}" for key in given)
        raise ConfigError(f"Config keys {named} each name {what}: set one of them. Received: {received}")


def _requires(obj, section, key, condition, requirement):
    if not condition:
        _fail(f"{section}.{key}", requirement, getattr(obj, key))


@dataclasses.dataclass(frozen=True)
class DataSection:
    """[data]: where the images come from and how they are prepared.

    Attributes:
        dataset: TFDS image-classification dataset name ("" with no
            `directory`: "cifar10"). Its test split is `test`, else
            `validation`, else carved from `train` (see `test_size`).
        directory: a directory with one sub-folder of images per class
            (sorted folder names are the classes), instead of `dataset`.
        test_directory: a directory of the same layout with the test images;
            "" carves the test split from `directory`.
        data_dir: TFDS data dir; "" uses $TFDS_DATA_DIR, then TFDS' default.
        download: let TFDS download the dataset if it is not prepared.
        image_size: side of the square model input.
        batch_size: batch size of every phase and of evaluation.
        validation_size: examples held out from the end of the training data.
        test_size: examples carved from the end of the training data for
            the test split when the data have none of their own (a
            `directory` without `test_directory`, a TFDS dataset with only
            `train`); 0: as many as `validation_size`.
        max_train_examples: use only the first N training examples (0: all).
        normalization: how pixels are scaled: "auto" (the way
            `model.architecture` was trained), or one of "minus_one_to_one",
            "zero_to_one", "pixels", "caffe", "torch"; required for a
            `model.factory` or `model.file` model.
        augment: random pad-crop + flip of training images.
        shuffle_buffer: shuffle buffer of the training pipeline.
    """

    dataset: str = ""
    directory: str = ""
    test_directory: str = ""
    data_dir: str = ""
    download: bool = True
    image_size: int = 160
    batch_size: int = 64
    validation_size: int = 5000
    test_size: int = 0
    max_train_examples: int = 0
    normalization: str = "auto"
    augment: bool = True
    shuffle_buffer: int = 10000

    @property
    def resolved_dataset(self):
        """The TFDS dataset name, or "" for directory data."""
        return "" if self.directory else self.dataset or DEFAULT_DATASET

    def check(self, section):
        _one_source(self, section, ("dataset", "directory"), "where the images come from")
        _requires(self, section, "test_directory", self.directory or not self.test_directory,
                  f'"" unless `{section}.directory` is set (TFDS datasets have their own test split)')
        _requires(self, section, "test_size", not (self.test_directory and self.test_size),
                  f"0 when `{section}.test_directory` is set (that directory is the test split)")
        _requires(self, section, "data_dir", not (self.directory and self.data_dir),
                  f'"" when `{section}.directory` is set (data_dir is where TFDS datasets are kept)')
        _requires(self, section, "normalization", self.normalization in ("auto", *NORMALIZATIONS),
                  "one of " + ", ".join(repr(n) for n in ("auto", *NORMALIZATIONS)))
        _at_least(
            self, section, image_size=32, batch_size=1, validation_size=0, test_size=0, max_train_examples=0,
            shuffle_buffer=1,
        )


def _plain_toml(value):
    """Whether `value` is made of strings, finite numbers, booleans, lists and tables only."""
    if isinstance(value, dict):
        return all(isinstance(key, str) and _plain_toml(item) for key, item in value.items())
    if isinstance(value, list):
        return all(_plain_toml(item) for item in value)
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, (str, int, bool))


@dataclasses.dataclass(frozen=True)
class ModelSection:
    """[model]: the model, from exactly one of `architecture`, `factory` and `file`.

    Attributes:
        architecture: a tf_keras.applications backbone + pooling + softmax
            (`edgekeras.models.build_transfer_model`): "mobilenet_v2",
            "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0" to
            "efficientnet_b3" or "resnet50" ("" with no factory or file:
            "mobilenet_v2").
        factory: "package.module:function", a function of yours returning a
            tf_keras model; called with `num_classes=`, `image_size=` and
            `factory_args`, plus `hp=` if it takes it (keras-tuner
            hyperparameters: the trial's in `edgekeras tune`, defaults in
            `edgekeras run`). The module is imported from the current
            directory or the Python path.
        factory_args: a table of further keyword arguments of the factory.
        file: a trained model of yours (.h5, .keras or a SavedModel
            directory); set `train.epochs` = 0 to keep its training.
        alpha: width multiplier (MobileNet architectures only).
        weights: "imagenet" ($EDGEKERAS_WEIGHTS for mobilenet_v2, or
            $EDGEKERAS_WEIGHTS_<ARCHITECTURE> such as
            $EDGEKERAS_WEIGHTS_RESNET50, when it names a local file; else
            download), "none" (random init) or the path of a no-top .h5 file.
            Architectures only.
        trainable_from: first fine-tuned layer. "auto": the architecture's
            default cut with pretrained weights (e.g. "block_16_expand"),
            every layer with weights = "none", and the model's own trainable
            flags for a factory or file model. "" freezes the whole base
            (only the classifier trains). A layer name freezes the layers
            before it.
        train_batchnorm: train BatchNormalization layers of the fine-tuned
            part (do, with weights = "none").
        dropout: dropout before the classifier (architectures only).
        keras: the Keras the whole run uses: "tf_keras" (Keras 2, QAT by
            TFMOT) or "keras3" (`import keras` on the TensorFlow backend,
            edgekeras' own QAT). An architecture is built with it; a factory
            or file model must be of it.
    """

    architecture: str = ""
    factory: str = ""
    factory_args: dict = dataclasses.field(default_factory=dict)
    file: str = ""
    alpha: float = 1.0
    weights: str = "imagenet"
    trainable_from: str = "auto"
    train_batchnorm: bool = False
    dropout: float = 0.0
    keras: str = "tf_keras"

    @property
    def kind(self):
        """Where the model comes from: "architecture", "factory" or "file"."""
        return "factory" if self.factory else "file" if self.file else "architecture"

    @property
    def resolved_architecture(self):
        """The architecture's name, or "" for a factory or file model."""
        if self.kind != "architecture":
            return ""
        return self.architecture or DEFAULT_ARCHITECTURE

    def check(self, section):
        _one_source(self, section, _MODEL_SOURCES, "the model")
        _requires(self, section, "architecture", self.architecture in ("", *ARCHITECTURES),
                  "one of " + ", ".join(repr(a) for a in ARCHITECTURES))
        _requires(self, section, "factory", not self.factory or _FACTORY.match(self.factory),
                  'a "package.module:function" reference, e.g. "mymodels:build"')
        _requires(self, section, "factory_args", self.factory or not self.factory_args,
                  f"an empty table unless `{section}.factory` is set")
        _requires(self, section, "factory_args", _plain_toml(self.factory_args),
                  "a table of strings, finite numbers, booleans, lists and tables")
        _requires(self, section, "alpha", self.alpha > 0, "> 0")
        _requires(self, section, "weights", self.weights, '"imagenet", "none" or a .h5 path')
        _requires(self, section, "dropout", 0.0 <= self.dropout < 1.0, "in [0, 1)")
        _requires(self, section, "keras", self.keras in KERASES, "one of " + ", ".join(repr(k) for k in KERASES))
        if self.kind == "architecture":
            _requires(self, section, "alpha", self.alpha == 1.0 or self.resolved_architecture.startswith("mobilenet"),
                      f"1.0 for {self.resolved_architecture!r} (only the MobileNets have a width multiplier)")
            return
        mine = f"with `{section}.{self.kind}` (a model of yours is used as it is)"
        _requires(self, section, "alpha", self.alpha == 1.0, f"1.0 {mine}")
        _requires(self, section, "weights", self.weights == "imagenet", f'left at "imagenet" {mine}')
        _requires(self, section, "dropout", self.dropout == 0.0, f"0 {mine}")
        _requires(self, section, "trainable_from", self.trainable_from,
                  f'"auto" (the model\'s own trainable flags) or a layer name {mine}')


def check_inputs(data, model, data_name="data", model_name="model"):
    """Checks what [data] and [model] say together: a model of yours needs an explicit normalization.

    Raises:
        ConfigError: `data.normalization` is "auto" for a factory or file model.
    """
    if data.normalization == "auto" and model.kind != "architecture":
        raise ConfigError(
            f"Config key `{data_name}.normalization` must say how the model of `{model_name}.{model.kind}` "
            f"expects its pixels scaled: one of {', '.join(repr(n) for n in NORMALIZATIONS)} (\"auto\" follows "
            f"`{model_name}.architecture` only). Received: {data_name}.normalization='auto'"
        )


def input_normalization(data, model):
    """How the images are scaled for the model: `data.normalization`, or the architecture's for "auto"."""
    if data.normalization != "auto":
        return data.normalization
    return ARCHITECTURE_NORMALIZATION[model.resolved_architecture]
