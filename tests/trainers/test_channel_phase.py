"""EdgeTrainer's channel-pruning phase: float -> channels (shrunk) -> prune -> QAT, its arguments and resume."""

import numpy as np
import pytest
import tensorflow as tf

from edgekeras import keras, schedules, sparsity
from edgekeras.callbacks import ChannelPruning
from edgekeras.distillation import Distillation
from edgekeras.trainers import EdgeTrainer

SAMPLES, BATCH = 64, 8
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def conv_net():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False, name="stem")(inputs)
    x = keras.layers.ReLU(6.0)(keras.layers.BatchNormalization(name="stem_bn")(x))
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="depthwise")(x)
    x = keras.layers.Conv2D(32, 1, activation="relu", name="pointwise")(x)
    outputs = keras.layers.Dense(3, name="logits")(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs, name="tiny")


def data(seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((SAMPLES, 8, 8, 3), dtype=np.float32), rng.integers(0, 3, SAMPLES)


def dataset():
    return tf.data.Dataset.from_tensor_slices(data()).batch(BATCH)


def widths_of(model):
    return [model.get_layer(name).output.shape[-1] for name in ("stem", "pointwise")]


def test_channels_then_prune_then_qat_train_the_narrower_model_distilled_from_the_dense_one():
    trainer = EdgeTrainer(conv_net(), "adam", LOSS, ["accuracy"], distillation=Distillation(weight=0.5))
    pruning = ChannelPruning(schedules.PolynomialDecay(0.0, 0.5, begin_step=0, end_step=8, frequency=2), round_to=4)
    trainer.fit(dataset(), float_epochs=1, channels=pruning, channel_epochs=2, prune=0.5, prune_epochs=1,
                qat_epochs=1, verbose=0)
    assert list(trainer.histories) == ["float", "channels", "prune", "qat"]
    assert trainer.histories["channels"]["phase"] == [1.0, 1.0]
    assert trainer.histories["channels"]["kept_channels/pointwise"][-1] == 16
    assert widths_of(trainer.float_model) == [16, 32]
    assert widths_of(trainer.slim_model) == widths_of(trainer.pruned_model) == [8, 16]
    assert trainer.pruned_model is not trainer.slim_model
    assert sparsity.overall_sparsity(trainer.slim_model) < 0.1  # the narrower model stays dense
    assert trainer.channel_widths == {"stem": 8, "pointwise": 16}
    assert trainer.summary()["channel_widths"] == {"stem": 8, "pointwise": 16}
    assert trainer.summary()["phases"] == ["float", "channels", "prune", "qat"]
    # Unstructured zeros on top of the narrower model, kept through QAT.
    assert 0.4 < trainer.summary()["sparsity"]["prune"] < 0.6
    assert trainer.qat_model.get_layer("quant_pointwise").output.shape[-1] == 16


def test_widths_from_an_allocation_reach_their_counts():
    trainer = EdgeTrainer(conv_net(), "adam", LOSS)
    x, y = data()
    trainer.fit(x, y, batch_size=BATCH, channels={"pointwise": 16}, channel_epochs=2, verbose=0)
    assert widths_of(trainer.slim_model) == [16, 16] and trainer.model is trainer.slim_model
    history = trainer.histories["channels"]
    assert history["target_channel_sparsity"][-1] == pytest.approx(0.5)
    x_test = data(1)[0][:4]
    assert np.asarray(trainer.slim_model(x_test)).shape == (4, 3)


def test_a_fraction_removes_that_share_of_every_group_rounded_to_16():
    trainer = EdgeTrainer(conv_net(), "adam", LOSS)
    trainer.fit(dataset(), channels=0.5, channel_epochs=1, verbose=0)
    assert widths_of(trainer.slim_model) == [16, 16]  # 16 channels stay whole at the default multiple


def test_resumed_fit_restores_the_finished_channel_phase_and_shrinks_alike(tmp_path):
    def run():
        trainer = EdgeTrainer(conv_net(), "adam", LOSS, backup_dir=tmp_path / "backup")
        pruning = ChannelPruning(schedules.ConstantSparsity(0.5, begin_step=0, frequency=100), round_to=4)
        keras.utils.set_random_seed(0)
        trainer.fit(dataset(), float_epochs=1, channels=pruning, channel_epochs=1, prune=0.5, prune_epochs=1, verbose=0)
        return trainer

    first, second = run(), run()
    assert widths_of(second.slim_model) == widths_of(first.slim_model) == [8, 16]
    for a, b in zip(first.model.get_weights(), second.model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert sparsity.overall_sparsity(second.model) == pytest.approx(sparsity.overall_sparsity(first.model))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"channels": 0.5}, r"Argument `channel_epochs` must be a positive integer when `channels` is set"),
        ({"channel_epochs": 1}, r"Argument `channels` must be set to prune channels for channel_epochs=1"),
        ({"channels": 1.5, "channel_epochs": 1}, r"Argument `channels` must be None, the fraction .* Received: channels=1.5"),
        ({"channels": 0.5, "channel_epochs": -1}, r"Argument `channel_epochs` must be an integer >= 0"),
    ],
)
def test_channel_arguments_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EdgeTrainer(conv_net(), "adam", LOSS).fit(dataset(), **kwargs)


def test_an_unsized_dataset_needs_steps_per_epoch_for_a_fraction():
    endless = dataset().repeat()
    with pytest.raises(ValueError, match=r"Argument `steps_per_epoch` is needed to turn `channels` into a schedule"):
        EdgeTrainer(conv_net(), "adam", LOSS).fit(endless, channels=0.5, channel_epochs=1)


def test_keras3_model_goes_through_the_channel_phase_and_shrinks():
    import keras as keras3

    inputs = keras3.Input((8, 8, 3))
    x = keras3.layers.Conv2D(16, 3, padding="same", use_bias=False, name="stem")(inputs)
    x = keras3.layers.ReLU(6.0)(keras3.layers.BatchNormalization(name="stem_bn")(x))
    x = keras3.layers.Conv2D(32, 1, activation="relu", name="pointwise")(x)
    outputs = keras3.layers.Dense(3, name="logits")(keras3.layers.GlobalAveragePooling2D()(x))
    model = keras3.Model(inputs, outputs)
    trainer = EdgeTrainer(model, "adam", keras3.losses.SparseCategoricalCrossentropy(from_logits=True))
    x_train, y_train = data()
    trainer.fit(x_train, y_train, batch_size=BATCH, float_epochs=1, channels={"pointwise": 16}, channel_epochs=1,
                verbose=0)
    assert trainer.slim_model.get_layer("pointwise").output.shape[-1] == 16
    assert trainer.channel_widths["pointwise"] == 16
