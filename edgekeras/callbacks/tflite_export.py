"""`TFLiteExport`: convert, verify and write .tflite files when `fit` ends.

Exporting is the last step of every edge training run, so it belongs in the
fit loop like checkpointing does: add the callback and `model.fit` leaves
verified .tflite files behind. Each file is converted from the trained model,
checked in LiteRT against the Keras model and only then renamed into place
(see `edgekeras.litert.export_tflite`, which also decides which settings apply
to which conversion). A model still wrapped for pruning is stripped first; a
quantization-aware model is exported as int8 from its own ranges.

Before the first epoch (`on_train_begin`) it converts the untrained model once
per conversion (`edgekeras.litert.trial_conversion`): a model the converter
refuses fails then, with the layer and the fix, not after training. A model
whose kind was already tried (the next phase of an `EdgeTrainer`, which tries
the callback's conversions itself before any phase) is not tried again.

Like Keras' own callbacks, it touches no model, file or TF object in
`__init__`, so it survives `copy.deepcopy` (keras-tuner copies callbacks per
trial); the calibration and verification datasets are shared between copies
rather than copied, since tf.data pipelines are immutable descriptions.
"""

import copy
import os

from edgekeras.backend import Callback
from edgekeras.litert import (
    CONVERSIONS,
    IO_DTYPES,
    check_float_layers,
    check_input_signature,
    check_representative_data,
    export_tflite,
    trial_conversion,
)
from edgekeras.litert.signature import find_inputs
from edgekeras.litert.trial import structure_key

__all__ = ["TFLiteExport"]

_SHARED = ("representative_data", "verify_data")


def _check_conversions(conversions):
    if isinstance(conversions, str):
        conversions = (conversions,)
    conversions = tuple(conversions)
    if not conversions:
        raise ValueError("Argument `conversions` must name at least one conversion. Received: conversions=()")
    for conversion in conversions:
        if conversion not in CONVERSIONS:
            raise ValueError(
                f"Argument `conversions` must hold names from {', '.join(CONVERSIONS)}. "
                f"Received: conversions={conversions!r}"
            )
    if len(set(conversions)) != len(conversions):
        raise ValueError(f"Argument `conversions` has duplicates. Received: conversions={conversions!r}")
    return conversions


class TFLiteExport(Callback):
    """Exports the trained model to .tflite at the end of training.

    Files are named `<prefix><conversion>.tflite` in `directory`. After
    `fit`, `callback.exported` lists an `edgekeras.litert.ExportedModel`
    (path, sizes, verification numbers) per file.

    Args:
        directory: where to write the files (created if needed).
        conversions: names from `edgekeras.litert.CONVERSIONS`, e.g.
            `("float32", "float16", "dynamic_int8", "int8")`.
        prefix: file-name prefix, e.g. "pruned_".
        representative_data: calibration images for "int8" on a model
            without QAT: a batched `(images, labels)` dataset from the
            training split (e.g. `ImageData.train`).
        representative_examples: calibration images, at most.
        io_dtype: input/output dtype of "int8" files: "float32", "int8" or
            "uint8"; the other conversions write float32-I/O files.
        verify_data: images to verify each file on (a batched dataset or an
            array); None uses a fixed random batch.
        verify_examples: images to verify on.
        min_agreement: if set, a file agreeing with Keras on a smaller
            fraction of top-1 predictions is not written and `fit` raises.
        float_layers: layers that post-training "int8" files keep in float
            (see `edgekeras.litert.convert`); not used for the other
            conversions nor for a quantization-aware model.
        input_signature: the model's inputs as a `tf.TensorSpec` (a list or
            dict of them for several inputs); only needed for a subclassed
            model whose inputs neither its first call nor
            `representative_data` / `verify_data` tell.
        trial: convert the untrained model once per conversion before the
            first epoch (a few seconds), so that a model the converter
            refuses fails before training. A failure's converter output is
            written to `<directory>/<prefix>conversion.log`.
        verbose: print one line per file.

    Example:

    ```python
    export = TFLiteExport("out", ("float32", "int8"), representative_data=data.train,
                          verify_data=data.validation)
    model.fit(data.train, epochs=1, callbacks=[export])
    print([e.path for e in export.exported])
    ```
    """

    def __init__(
        self,
        directory,
        conversions=("float32",),
        *,
        prefix="",
        representative_data=None,
        representative_examples=256,
        io_dtype="float32",
        verify_data=None,
        verify_examples=64,
        min_agreement=None,
        float_layers=(),
        input_signature=None,
        trial=True,
        verbose=1,
    ):
        super().__init__()
        if not isinstance(directory, (str, os.PathLike)) or not os.fspath(directory):
            raise ValueError(f"Argument `directory` must be a non-empty path. Received: directory={directory!r}")
        conversions = _check_conversions(conversions)
        if io_dtype not in IO_DTYPES:
            raise ValueError(f"Argument `io_dtype` must be one of {', '.join(IO_DTYPES)}. Received: io_dtype={io_dtype!r}")
        if min_agreement is not None and not 0.0 <= min_agreement <= 1.0:
            raise ValueError(f"Argument `min_agreement` must be in [0, 1] or None. Received: min_agreement={min_agreement!r}")
        if not isinstance(prefix, str):
            raise ValueError(f"Argument `prefix` must be a string. Received: prefix={prefix!r}")
        if not isinstance(trial, bool):
            raise ValueError(f"Argument `trial` must be True or False. Received: trial={trial!r}")
        self.directory = os.fspath(directory)
        self.conversions = conversions
        self.prefix = prefix
        self.representative_data = representative_data
        self.representative_examples = representative_examples
        self.io_dtype = io_dtype
        self.verify_data = verify_data
        self.verify_examples = verify_examples
        self.min_agreement = min_agreement
        self.float_layers = check_float_layers(float_layers)
        self.input_signature = None if input_signature is None else check_input_signature(input_signature)
        self.trial = trial
        self.verbose = verbose
        self.exported = []
        self._tried = set()

    def __deepcopy__(self, memo):
        clone = copy.copy(self)
        memo[id(self)] = clone
        for key, value in vars(self).items():
            if key in _SHARED or key == "model":
                setattr(clone, key, value)
            else:
                setattr(clone, key, copy.deepcopy(value, memo))
        return clone

    @property
    def log_path(self):
        """Where the converter's output goes when a conversion fails."""
        return os.path.join(self.directory, f"{self.prefix}conversion.log")

    def trial_conversion(self, model=None):
        """Converts `model` once per conversion of this callback, as export will, without writing a file.

        A model of a kind already tried (`edgekeras.litert.trial.structure_key`)
        is skipped, and so is a subclassed model that has never been called
        when no data or `input_signature` tells its inputs (export reads them
        from its first call).

        Args:
            model: the model to try (default: the callback's model). An
                `EdgeTrainer` passes each phase's model before training.

        Raises:
            ValueError: calibration data missing, or a conversion the model
                cannot have (a float conversion of a QAT model).
            ConversionError: the converter refused the model.

        Example:

        ```python
        TFLiteExport("out", ("float32", "int8"), representative_data=train).trial_conversion(model)
        ```
        """
        model = self.model if model is None else model
        for conversion in self.conversions:
            check_representative_data(model, conversion, self.representative_data)
        key = (structure_key(model), self.conversions)
        if key in self._tried:
            return
        inputs = find_inputs(model, self.input_signature, (self.representative_data, self.verify_data))
        if inputs is None:
            return
        sizes = trial_conversion(
            model, self.conversions, representative_data=self.representative_data, io_dtype=self.io_dtype,
            float_layers=self.float_layers, input_signature=inputs, log_path=self.log_path,
        )
        self._tried.add(key)
        if self.verbose:
            print(f"TFLiteExport: the untrained model converts to {', '.join(sizes)}")

    def on_train_begin(self, logs=None):
        self.exported = []
        # Checked here, not at the end: a missing calibration set or a layer
        # the converter refuses must not surface only after hours of training.
        if self.trial:
            self.trial_conversion()
        else:
            for conversion in self.conversions:
                check_representative_data(self.model, conversion, self.representative_data)

    def on_train_end(self, logs=None):
        self.exported = []
        for conversion in self.conversions:
            path = os.path.join(self.directory, f"{self.prefix}{conversion}.tflite")
            exported = export_tflite(
                self.model,
                path,
                conversion,
                representative_data=self.representative_data,
                representative_examples=self.representative_examples,
                io_dtype=self.io_dtype,
                verify_data=self.verify_data,
                verify_examples=self.verify_examples,
                min_agreement=self.min_agreement,
                float_layers=self.float_layers,
                input_signature=self.input_signature,
                log_path=self.log_path,
            )
            self.exported.append(exported)
            if self.verbose:
                check = exported.verification
                print(
                    f"TFLiteExport: wrote {exported.path} ({exported.size_bytes} bytes, "
                    f"{exported.gzip_bytes} gzipped); top-1 agreement with Keras "
                    f"{check.top1_agreement:.1%}, max |diff| {check.max_abs_diff:.2g} "
                    f"on {check.examples} images"
                )
