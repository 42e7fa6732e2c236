"""EdgeTrainer phases, prune-preserving QAT, frozen layers, errors and saving."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_optimization as tfmot

from edgekeras import keras, models, sparsity
from edgekeras.callbacks import MagnitudePruning
from edgekeras.schedules import ConstantSparsity
from edgekeras.quantization import UnquantizableLayersError, is_quantization_aware, quantize_model
from edgekeras.trainers import EdgeTrainer
from edgekeras.quantization import calibrate_activation_ranges

SAMPLES = 64
BATCH = 8
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def conv_net(frozen_stem=True):
    inputs = keras.Input((8, 8, 4))
    x = keras.layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="depthwise")(x)
    x = keras.layers.Conv2D(16, 1, activation="relu", name="pointwise")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, name="logits")(x)
    model = keras.Model(inputs, outputs, name="tiny")
    if frozen_stem:
        model.get_layer("stem").trainable = False
        model.get_layer("stem_bn").trainable = False
    return model


def data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((SAMPLES, 8, 8, 4), dtype=np.float32)
    y = rng.integers(0, 3, SAMPLES)
    return x, y


def dataset():
    return tf.data.Dataset.from_tensor_slices(data()).batch(BATCH)


def weights_by_name(model):
    return {layer.name: weight.numpy() for layer, weight in sparsity.prunable_weights(model)}


class CountEpochs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.models = []

    def on_train_begin(self, logs=None):
        self.models.append(self.model)


@pytest.fixture(scope="module")
def trained():
    """One float -> prune -> QAT run shared by the tests that only inspect it."""
    model = conv_net()
    frozen_before = {
        "kernel": model.get_layer("stem").kernel.numpy().copy(),
        "bn": [w.numpy().copy() for w in model.get_layer("stem_bn").weights],
    }
    counter = CountEpochs()
    trainer = EdgeTrainer(model, lambda phase: keras.optimizers.Adam(1e-3), LOSS, ["accuracy"])
    trainer.fit(
        dataset(), validation_data=dataset(), float_epochs=1, prune=0.75, prune_epochs=2, qat_epochs=1,
        callbacks=[counter], verbose=0,
    )
    return trainer, frozen_before, counter


def test_phases_run_in_order_with_user_callbacks(trained):
    trainer, _, counter = trained
    assert list(trainer.histories) == ["float", "prune", "qat"]
    assert [m is trainer.qat_model for m in counter.models] == [False, False, True]
    assert trainer.histories["float"]["phase"] == [0.0]
    assert trainer.histories["prune"]["phase"] == [2.0, 2.0]
    assert trainer.histories["qat"]["phase"] == [3.0]
    for history in trainer.histories.values():
        assert all(isinstance(v, float) for v in history["learning_rate"])
        assert "val_loss" in history
    assert trainer.latest_model is trainer.qat_model
    assert is_quantization_aware(trainer.qat_model)
    assert not is_quantization_aware(trainer.pruned_model)
    assert trainer.summary()["calibrated_ranges"] > 0


def test_pruning_reaches_target_and_survives_qat(trained):
    trainer, _, _ = trained
    summary = trainer.summary()
    assert summary["quantize_scheme"] == "prune_preserve"
    assert summary["sparsity"]["float"] == 0.0
    assert summary["sparsity"]["prune"] == pytest.approx(0.75, abs=0.005)
    assert summary["sparsity"]["qat"] >= 0.95 * summary["sparsity"]["prune"]
    assert summary["pruned_layers"] == ["depthwise", "logits", "pointwise"]
    assert trainer.histories["prune"]["target_sparsity"][-1] == pytest.approx(0.75)
    assert trainer.histories["qat"]["sparsity"][-1] >= 0.95 * 0.75
    pruned = weights_by_name(trainer.pruned_model)
    quantized = weights_by_name(trainer.qat_model)
    for name in summary["pruned_layers"]:
        zeros = pruned[name] == 0
        assert np.mean(quantized[name][zeros] == 0) >= 0.95, name


def test_frozen_layers_unchanged_in_every_phase(trained):
    trainer, before, _ = trained
    for model in (trainer.float_model, trainer.pruned_model):
        np.testing.assert_array_equal(model.get_layer("stem").kernel.numpy(), before["kernel"])
        assert not model.get_layer("stem").trainable
    np.testing.assert_array_equal(weights_by_name(trainer.qat_model)["stem"], before["kernel"])
    wrapped = {getattr(layer, "layer", layer).name: layer for layer in trainer.qat_model.layers}
    assert not wrapped["stem"].layer.trainable and not wrapped["stem_bn"].layer.trainable
    for saved, now in zip(before["bn"], wrapped["stem_bn"].layer.weights):
        np.testing.assert_array_equal(now.numpy(), saved)


def test_float_model_is_a_dense_snapshot(trained):
    trainer, _, _ = trained
    assert trainer.float_model is not trainer.pruned_model
    assert sparsity.overall_sparsity(trainer.float_model) == 0.0


@pytest.mark.parametrize(
    "phase, filename",
    [("float", "float.keras"), ("float", "float.h5"), ("pruned", "pruned.keras"), ("pruned", "pruned_sm"),
     ("qat", "qat.h5"), ("qat", "qat_sm")],
)
def test_each_phase_model_saves_and_loads(trained, tmp_path, phase, filename):
    trainer, _, _ = trained
    model = getattr(trainer, f"{phase}_model")
    path = models.save_model(model, tmp_path / filename)
    loaded = models.load_model(path)
    x, _ = data()
    np.testing.assert_allclose(loaded.predict(x[:4], verbose=0), model.predict(x[:4], verbose=0), atol=1e-4)
    assert sparsity.layer_sparsities(loaded) == pytest.approx(sparsity.layer_sparsities(model))


def test_qat_model_refuses_keras_format_with_fix(trained, tmp_path):
    trainer, _, _ = trained
    with pytest.raises(ValueError, match=r"Save it as \.h5 or as a SavedModel directory"):
        models.save_model(trainer.qat_model, tmp_path / "qat.keras")
    assert not list(tmp_path.iterdir())


def test_save_model_rejects_unknown_extension_and_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match=r"Argument `path` must end in \.h5 or \.keras.*Received: path='.*model\.pb'"):
        models.save_model(conv_net(), tmp_path / "model.pb")
    assert not list(tmp_path.iterdir())


def test_custom_objects_cover_tfmot_classes():
    objects = models.custom_objects()
    for name in ("QuantizeWrapperV2", "QuantizeLayer", "PrunePreserveDefault8BitConvWeightsQuantizer"):
        assert name in objects


def test_load_model_reports_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Argument `path` names nothing on disk"):
        models.load_model(tmp_path / "missing.h5")


def _pruned_tiny():
    model = conv_net(frozen_stem=False)
    model.compile(keras.optimizers.Adam(1e-3), LOSS)
    model.fit(*data(), batch_size=BATCH, epochs=1, verbose=0,
              callbacks=[MagnitudePruning(ConstantSparsity(0.75, frequency=4), policy="skip_first_last")])
    return model


def _kept_zeros(pruned, scheme):
    qat_model, used = quantize_model(pruned, scheme=scheme)
    qat_model.compile(keras.optimizers.Adam(1e-3), LOSS)
    qat_model.fit(*data(), batch_size=BATCH, epochs=1, verbose=0)
    before, after = weights_by_name(pruned), weights_by_name(qat_model)
    # Conv2D and Dense: the layers the prune-preserving scheme covers.
    zeros = np.concatenate([(before[n] == 0).ravel() for n in ("pointwise",)])
    kept = np.concatenate([(after[n] == 0).ravel() for n in ("pointwise",)])
    return used, np.sum(zeros & kept) / np.sum(zeros)


def test_plain_qat_destroys_sparsity_prune_preserving_keeps_it():
    pruned = _pruned_tiny()
    used, default_kept = _kept_zeros(pruned, "default")
    assert used == "default" and default_kept < 0.5
    used, preserved = _kept_zeros(pruned, "prune_preserve")
    assert used == "prune_preserve" and preserved >= 0.95
    assert quantize_model(pruned)[1] == "prune_preserve"  # "auto" sees the zeros


def test_nested_model_is_flattened_and_trained_through_qat():
    base = keras.Sequential(
        [keras.layers.Conv2D(8, 3, input_shape=(8, 8, 4), name="inner_conv"), keras.layers.ReLU(name="inner_relu")],
        name="base",
    )
    inputs = keras.Input((8, 8, 4))
    outputs = keras.layers.Dense(3, name="head")(keras.layers.GlobalAveragePooling2D()(base(inputs)))
    trainer = EdgeTrainer(keras.Model(inputs, outputs), "adam", LOSS)
    trainer.fit(*data(), batch_size=BATCH, prune=0.5, prune_epochs=1, qat_epochs=1, verbose=0)
    assert {layer.name for layer in trainer.pruned_model.layers} >= {"inner_conv", "head"}
    assert trainer.summary()["sparsity"]["qat"] >= 0.95 * 0.5


def test_unquantizable_layer_reported_before_training_and_skip_fixes_it():
    inputs = keras.Input((8, 8, 4))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.Lambda(lambda t: t * 2.0, name="doubler")(x)
    outputs = keras.layers.Dense(3, name="head")(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    before = [w.copy() for w in model.get_weights()]
    trainer = EdgeTrainer(model, "adam", LOSS)
    with pytest.raises(UnquantizableLayersError, match=r"'doubler' \(Lambda\).*quantize_skip=\['doubler'\]") as info:
        trainer.fit(*data(), batch_size=BATCH, float_epochs=1, qat_epochs=1, verbose=0)
    assert info.value.layers == [("doubler", "Lambda")]
    assert trainer.histories == {}
    for saved, now in zip(before, model.get_weights()):
        np.testing.assert_array_equal(saved, now)
    trainer = EdgeTrainer(model, "adam", LOSS, quantize_skip=["doubler"])
    trainer.fit(*data(), batch_size=BATCH, qat_epochs=1, verbose=0)
    assert is_quantization_aware(trainer.qat_model)


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.head = keras.layers.Dense(3)

    def call(self, inputs):
        return self.head(inputs)


TRAINER_ARGUMENTS = [
    (lambda: EdgeTrainer(Subclassed(), "adam", LOSS), r"Argument `model` must be a functional or Sequential model"),
    (lambda: EdgeTrainer(conv_net(), "adam", None), r"Argument `loss` is required.*Received: loss=None"),
    (lambda: EdgeTrainer(conv_net(), "nonsense", LOSS),
     r"Argument `optimizer` must be a Keras optimizer identifier.*Received: optimizer='nonsense'"),
    (lambda: EdgeTrainer(conv_net(), 3, LOSS),
     r"Argument `optimizer` must be a Keras optimizer identifier, config dict.*Received: optimizer=3"),
    (lambda: EdgeTrainer(conv_net(), "adam", LOSS, prune_policy="most"),
     r"Argument `prune_policy` must be one of .*Received: prune_policy='most'"),
    (lambda: EdgeTrainer(conv_net(), "adam", LOSS, quantize_scheme="int4"),
     r"Argument `quantize_scheme` must be one of .*Received: quantize_scheme='int4'"),
    (lambda: EdgeTrainer(conv_net(), "adam", LOSS, quantize_skip="stem"),
     r"Argument `quantize_skip` must be a list of layer names\. Received: quantize_skip='stem'"),
    (lambda: EdgeTrainer(conv_net(), "adam", LOSS, compile_kwargs=[1]), r"Argument `compile_kwargs` must be a dict"),
    (lambda: EdgeTrainer(conv_net(), "adam", LOSS, calibration_steps=1),
     r"Argument `calibration_steps` must be 0 \(off\) or an integer >= 2\. Received: calibration_steps=1"),
]


@pytest.mark.parametrize("make, message", TRAINER_ARGUMENTS)
def test_trainer_bad_argument(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make()


FIT_ARGUMENTS = [
    (dict(float_epochs=-1), r"Argument `float_epochs` must be an integer >= 0\. Received: float_epochs=-1"),
    (dict(qat_epochs=1.5), r"Argument `qat_epochs` must be an integer >= 0\. Received: qat_epochs=1\.5"),
    (dict(prune=1.5, prune_epochs=1), r"Argument `prune` must be None, a target sparsity in \(0, 1\).*Received: prune=1\.5"),
    (dict(prune=0.5), r"Argument `prune_epochs` must be a positive integer when `prune` is set\. Received: prune_epochs=0"),
    (dict(prune_epochs=2), r"Argument `prune` must be set to prune for prune_epochs=2 epochs"),
    (dict(), r"Arguments `float_epochs`, `channel_epochs`, `prune_epochs` and `qat_epochs` are all 0"),
    (dict(float_epochs=1, callbacks=keras.callbacks.History()), r"Argument `callbacks` must be a list of Keras callbacks"),
    (dict(float_epochs=1, epochs=3), r"Argument `epochs` is set by EdgeTrainer per phase"),
]


@pytest.mark.parametrize("kwargs, message", FIT_ARGUMENTS)
def test_fit_bad_argument(kwargs, message):
    trainer = EdgeTrainer(conv_net(), "adam", LOSS)
    with pytest.raises(ValueError, match=message):
        trainer.fit(dataset(), verbose=0, **kwargs)
    assert trainer.histories == {}


def test_unsized_data_needs_steps_per_epoch_for_a_sparsity_target():
    trainer = EdgeTrainer(conv_net(), "adam", LOSS)
    endless = dataset().repeat()
    with pytest.raises(ValueError, match=r"Argument `steps_per_epoch` is needed.*Received: steps_per_epoch=None"):
        trainer.fit(endless, prune=0.5, prune_epochs=1, verbose=0)
    trainer.fit(endless, prune=0.5, prune_epochs=1, steps_per_epoch=4, verbose=0)
    assert trainer.summary()["sparsity"]["prune"] == pytest.approx(0.5, abs=0.005)


def test_optimizer_instance_is_recreated_per_phase():
    optimizer = keras.optimizers.SGD(0.01, momentum=0.5)
    trainer = EdgeTrainer(conv_net(), optimizer, LOSS)
    trainer.fit(dataset(), float_epochs=1, qat_epochs=1, verbose=0)
    assert trainer.model.optimizer is not optimizer
    assert trainer.qat_model.optimizer is not trainer.model.optimizer
    assert trainer.qat_model.optimizer.get_config()["momentum"] == 0.5
    assert trainer.quantize_scheme == "default"
    assert isinstance(trainer.qat_model.layers[-1], tfmot.quantization.keras.QuantizeWrapperV2)


def test_calibration_brings_qat_outputs_close_to_float():
    keras.utils.set_random_seed(0)
    model = conv_net(frozen_stem=True)  # frozen BatchNorm, as in build_transfer_model
    model.compile(keras.optimizers.Adam(1e-2), LOSS)
    x, y = data()
    model.fit(x * 20.0, y, batch_size=BATCH, epochs=2, verbose=0)  # activations beyond [-6, 6]
    reference = model.predict(x[:16] * 20.0, verbose=0)
    errors = {}
    for calibrate in (False, True):
        qat_model, _ = quantize_model(model)
        if calibrate:
            batches = tf.data.Dataset.from_tensor_slices(x * 20.0).batch(BATCH)
            assert calibrate_activation_ranges(qat_model, batches, steps=4) > 0
        errors[calibrate] = np.abs(qat_model.predict(x[:16] * 20.0, verbose=0) - reference).mean()
    assert errors[True] < 0.1 * errors[False]
    # Against the spread of the logits: their mean can sit near zero.
    assert errors[True] < 0.05 * np.ptp(reference)


def test_calibration_steps_argument_checked():
    with pytest.raises(ValueError, match=r"Argument `steps` must be an integer >= 2\. Received: steps=0"):
        calibrate_activation_ranges(quantize_model(conv_net())[0], dataset(), steps=0)


class CrashAt(keras.callbacks.Callback):
    """Stands in for a killed process: fails as epoch `epoch` begins."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("simulated crash")


def test_backup_dir_resumes_a_crashed_fit_where_it_stopped(tmp_path):
    keras.utils.set_random_seed(0)
    initial = conv_net().get_weights()

    def fresh_model():
        model = conv_net()
        model.set_weights(initial)
        return model

    def trainer(model, backup_dir):
        return EdgeTrainer(model, lambda phase: keras.optimizers.Adam(1e-2), LOSS, backup_dir=backup_dir)

    arguments = dict(float_epochs=2, prune=0.5, prune_epochs=2, verbose=0)
    reference = fresh_model()
    trainer(reference, None).fit(dataset(), **arguments)

    with pytest.raises(RuntimeError, match="simulated crash"):
        # Epochs 0-1 float, 2-3 prune: dies as the second pruning epoch begins.
        trainer(fresh_model(), tmp_path).fit(dataset(), callbacks=[CrashAt(3)], **arguments)
    resumed_model = fresh_model()  # as in a new process
    resumed = trainer(resumed_model, tmp_path)
    resumed.fit(dataset(), **arguments)

    assert resumed.histories["float"] == {}  # restored, not retrained
    assert len(resumed.histories["prune"]["loss"]) == 1  # only the missing epoch
    for expected, actual in zip(reference.get_weights(), resumed_model.get_weights()):
        np.testing.assert_allclose(actual, expected, atol=1e-5)
    assert resumed.summary()["sparsity"]["prune"] == pytest.approx(0.5, abs=0.02)

    # A finished fit run again restores every phase and trains nothing.
    again_model = fresh_model()
    again = trainer(again_model, tmp_path)
    again.fit(dataset(), **arguments)
    assert again.histories == {"float": {}, "prune": {}}
    for expected, actual in zip(resumed_model.get_weights(), again_model.get_weights()):
        np.testing.assert_array_equal(actual, expected)


def test_backup_dir_argument_checked():
    with pytest.raises(ValueError, match=r"Argument `backup_dir` must be None or a directory path.*Received: backup_dir=3"):
        EdgeTrainer(conv_net(), "adam", LOSS, backup_dir=3)


@pytest.mark.parametrize("as_dataset", [False, True])
def test_labels_beyond_the_outputs_fail_before_training(as_dataset):
    x, _ = data()
    y = np.arange(SAMPLES) % 5  # conv_net has 3 outputs
    trainer = EdgeTrainer(conv_net(), "adam", LOSS)
    inputs = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH) if as_dataset else x
    where = " in the first batch" if as_dataset else ""  # arrays are checked whole
    match = (
        r"Argument `x`/`y` does not match the number of classes of model 'tiny', which has 3 outputs "
        rf"\(class ids 0 to 2\)\. Received: class ids from 0 to 4{where}\. Build the model"
    )
    with pytest.raises(ValueError, match=match):
        trainer.fit(inputs, None if as_dataset else y, float_epochs=1, verbose=0)
    assert trainer.histories == {}


def _atan(x):
    return tf.math.atan(x)


def atan_net():
    """conv_net with a layer TFLite cannot hold: `tf.math.atan` needs TF Select ops."""
    inputs = keras.Input((8, 8, 4))
    x = keras.layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
    x = keras.layers.Lambda(_atan, name="my_atan")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(x), name="atan_net")


def test_conversion_the_converter_refuses_fails_before_training(tmp_path):
    from edgekeras.litert import ConversionError

    model = atan_net()
    before = [w.copy() for w in model.get_weights()]
    trainer = EdgeTrainer(model, "adam", LOSS)
    match = (
        r"^Checked before training, on the untrained model: TFLite conversion 'float32' of model 'atan_net' failed at "
        r"layer 'my_atan' \(op tf.Atan\).*Fix: build layer 'my_atan' from Keras layers TFLite supports"
    )
    with pytest.raises(ConversionError, match=match):
        trainer.fit(dataset(), float_epochs=1, conversions=["float32", "int8"], verbose=0)
    assert trainer.histories == {} and all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    # conversions=() tries nothing: the same model trains.
    trainer.fit(dataset(), float_epochs=1, conversions=(), verbose=0)
    assert list(trainer.histories) == ["float"]


def test_quantization_aware_copy_is_converted_before_training(tmp_path):
    from edgekeras.litert import ConversionError

    # The Lambda is left out of QAT, so QAT itself would run: int8 export is what would fail after it.
    trainer = EdgeTrainer(atan_net(), "adam", LOSS, quantize_skip=["my_atan"])
    match = r"^Checked before training, on the quantization-aware copy of the untrained model: .*'int8'.*layer 'my_atan'"
    with pytest.raises(ConversionError, match=match):
        trainer.fit(dataset(), float_epochs=1, qat_epochs=1, verbose=0)
    assert trainer.histories == {} and trainer.qat_model is None


def test_export_callbacks_are_tried_once_per_kind_of_model(tmp_path, monkeypatch):
    from edgekeras.callbacks import TFLiteExport, tflite_export

    tried = []
    real = tflite_export.trial_conversion
    monkeypatch.setattr(tflite_export, "trial_conversion", lambda model, *a, **k: tried.append(model.name) or real(model, *a, **k))
    export = TFLiteExport(tmp_path, ("int8",), representative_data=dataset(), verify_data=dataset(), verbose=0)
    trainer = EdgeTrainer(conv_net(), "adam", LOSS)
    trainer.fit(dataset(), float_epochs=1, qat_epochs=1, callbacks=[export], verbose=0)
    # The float model and the QAT copy, before training; no phase tried again.
    assert len(tried) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["int8.tflite"] and export.exported[0].conversion == "int8"

    qat_float = TFLiteExport(tmp_path, ("float32",), verbose=0)
    with pytest.raises(ValueError, match=r"Argument `conversion` must be one of int8 for a quantization-aware"):
        EdgeTrainer(conv_net(), "adam", LOSS).fit(dataset(), float_epochs=1, qat_epochs=1, callbacks=[qat_float], verbose=0)


def test_conversions_argument_checked():
    with pytest.raises(ValueError, match=r"Argument `conversions` must hold names from .*Received: conversions=\('int4',\)"):
        EdgeTrainer(conv_net(), "adam", LOSS).fit(dataset(), float_epochs=1, conversions="int4")
