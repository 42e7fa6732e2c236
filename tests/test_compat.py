import os
import subprocess
import sys

import keras as keras3
import pytest

from edgekeras.compat import check_model, is_keras3_object, keras


def test_keras_is_tf_keras():
    import tf_keras

    assert keras.Model is tf_keras.Model
    assert keras.__version__.startswith("2.")


def test_keras3_model_gives_a_clear_error():
    model = keras3.Sequential([keras3.Input((3,)), keras3.layers.Dense(2)])
    assert is_keras3_object(model)
    with pytest.raises(
        TypeError,
        match=r"Argument `model` is a Keras 3 model \(keras\.src\..*Sequential\), but edgekeras needs a tf_keras "
        r".*Received: model=<Sequential.*>\. .*TF_USE_LEGACY_KERAS=1",
    ):
        check_model(model)


def test_non_model_gives_a_clear_error():
    with pytest.raises(TypeError, match=r"Argument `net` must be a tf_keras `keras.Model`. Received: net='x'"):
        check_model("x", argument="net")


def test_tf_keras_model_passes():
    model = keras.Sequential([keras.layers.Dense(2, input_shape=(3,))])
    assert check_model(model) is model


@pytest.mark.parametrize("legacy", [None, "0", "1"])
@pytest.mark.parametrize("tensorflow_first", [False, True])
def test_import_gives_tf_keras_whatever_the_environment(legacy, tensorflow_first):
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    if legacy is not None:
        env["TF_USE_LEGACY_KERAS"] = legacy
    order = (
        "import tensorflow as tf; tf.keras.layers; import edgekeras" if tensorflow_first else "import edgekeras; import tensorflow as tf"
    )
    script = (
        f"{order}\n"
        "import tf_keras\n"
        "assert edgekeras.keras.Model is tf_keras.Model\n"
        "print(edgekeras.keras.__version__)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().startswith("2.")
