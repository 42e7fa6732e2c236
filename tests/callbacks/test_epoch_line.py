"""`EpochLine`: the console line leaves per-layer figures to History and TensorBoard."""

import copy

import numpy as np
import pytest

from edgekeras.callbacks import EpochLine, MagnitudePruning, on_console
from edgekeras.compat import keras
from edgekeras.schedules import ConstantSparsity
from edgekeras.trainers import EdgeTrainer


def _model(library=keras):
    inputs = library.Input((6, 6, 3))
    x = library.layers.Conv2D(4, 3, activation="relu", name="conv_a")(inputs)
    x = library.layers.Conv2D(4, 1, activation="relu", name="conv_b")(x)
    x = library.layers.GlobalAveragePooling2D()(x)
    return library.Model(inputs, library.layers.Dense(2, activation="softmax", name="head")(x))


def _data():
    rng = np.random.default_rng(0)
    return rng.random((16, 6, 6, 3)).astype("float32"), rng.integers(0, 2, 16)


def _epoch_lines(text):
    return [line for line in text.splitlines() if " - loss: " in line]


@pytest.mark.parametrize(
    "key, shown",
    [("loss", True), ("val_accuracy", True), ("sparsity", True), ("target_sparsity", True), ("learning_rate", True),
     ("sparsity/conv_a", False), ("phase", False), ("quant_range_min", False)],
)
def test_on_console(key, shown):
    assert on_console(key) is shown


@pytest.mark.parametrize("full", [False, True])
def test_a_user_fit_with_pruning_shows_the_overall_sparsity_and_keeps_the_layers_in_history(capsys, full):
    model = _model()
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    x, y = _data()
    pruning = MagnitudePruning(ConstantSparsity(0.5, begin_step=0, frequency=1))
    history = model.fit(x, y, batch_size=8, epochs=2, validation_data=(x, y), verbose=0,
                        callbacks=[pruning, EpochLine(verbose=2, full=full)])
    lines = _epoch_lines(capsys.readouterr().out)
    assert len(lines) == 2
    for name in ("accuracy", "val_loss", "val_accuracy", "sparsity", "target_sparsity", "learning_rate"):
        assert f" - {name}: " in lines[-1]
    assert ("sparsity/conv_a" in lines[-1]) is full
    assert {"sparsity/conv_a", "sparsity/conv_b", "sparsity/head"} <= set(history.history)


def test_a_progress_bar_line_leaves_the_layers_off_too(capsys):
    model = _model()
    model.compile("adam", "sparse_categorical_crossentropy")
    x, y = _data()
    pruning = MagnitudePruning(ConstantSparsity(0.5, begin_step=0, frequency=1))
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[pruning, EpochLine(verbose=1)])
    out = capsys.readouterr().out
    assert "2/2" in out and " - sparsity: " in out and "sparsity/" not in out


def test_keras3_model(capsys):
    import keras as keras3

    model = _model(keras3)
    model.compile("adam", "sparse_categorical_crossentropy")
    x, y = _data()
    pruning = MagnitudePruning(ConstantSparsity(0.5, begin_step=0, frequency=1))
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[pruning, EpochLine()])
    lines = _epoch_lines(capsys.readouterr().out)
    assert len(lines) == 2 and " - sparsity: " in lines[-1] and "sparsity/" not in lines[-1]
    assert "sparsity/conv_a" in history.history


@pytest.mark.parametrize(
    "callbacks, verbose, shows_layers, lines",
    [
        ([], 2, False, 2),  # the trainer's own EpochLine
        ([EpochLine(full=True)], 2, True, 2),  # the user's, used as it is
        ([keras.callbacks.ProgbarLogger(count_mode="steps")], 2, True, 2),  # the user's logger: Keras' line
        ([], 0, False, 0),
    ],
)
def test_edge_trainer_phases(capsys, callbacks, verbose, shows_layers, lines):
    x, y = _data()
    trainer = EdgeTrainer(_model(), "adam", "sparse_categorical_crossentropy", ["accuracy"])
    trainer.fit(x, y, batch_size=8, float_epochs=1, prune=0.5, prune_epochs=1, callbacks=callbacks, conversions=(),
                verbose=verbose)
    printed = _epoch_lines(capsys.readouterr().out)
    assert len(printed) == lines
    if lines:
        assert ("sparsity/conv_a" in printed[-1]) is shows_layers
        assert (" - phase: " in printed[-1]) is shows_layers
        assert " - sparsity: " in printed[-1] and " - target_sparsity: " in printed[-1]
    assert "sparsity/conv_a" in trainer.histories["prune"]


def test_survives_deepcopy_after_a_fit():
    model = _model()
    model.compile("adam", "sparse_categorical_crossentropy")
    line = EpochLine()
    model.fit(*_data(), epochs=1, verbose=0, callbacks=[line])
    assert copy.deepcopy(line).verbose == 2


def test_bad_verbose():
    with pytest.raises(ValueError, match=r"Argument `verbose` must be 1 or 2. Received: verbose=0"):
        EpochLine(verbose=0)


def test_bad_full():
    with pytest.raises(ValueError, match=r"Argument `full` must be True or False. Received: full='yes'"):
        EpochLine(full="yes")
