"""Loading model files: safe mode against Lambda bytecode, and clear errors for damaged files."""

import zipfile

import numpy as np
import pytest

from edgekeras import keras
from edgekeras.models import ModelFileError, UnsafeModelError, load_model, save_model

FORMATS = [".h5", ".keras", ""]  # "" is a SavedModel directory


def lambda_model():
    inputs = keras.Input((4,))
    x = keras.layers.Lambda(lambda t: t * 2.0, name="doubler")(inputs)
    return keras.Model(inputs, keras.layers.Dense(2, name="head")(x), name="with_lambda")


def plain_model():
    inputs = keras.Input((4,))
    return keras.Model(inputs, keras.layers.Dense(2, name="head")(inputs), name="plain")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """{(kind, extension): path} of a Lambda and a plain model in every format."""
    directory = tmp_path_factory.mktemp("models")
    paths = {}
    for kind, make in (("lambda", lambda_model), ("plain", plain_model)):
        model = make()
        for extension in FORMATS:
            paths[kind, extension] = save_model(model, str(directory / f"{kind}{extension}"))
    return paths


@pytest.mark.parametrize("extension", FORMATS)
def test_lambda_layer_is_refused_by_default(saved, extension):
    match = r"Argument `path` names a model with Lambda layers .*'doubler'.*safe_mode=False"
    with pytest.raises(UnsafeModelError, match=match) as info:
        load_model(saved["lambda", extension])
    assert info.value.layers == ["doubler"]


@pytest.mark.parametrize("extension", FORMATS)
def test_lambda_layer_loads_with_safe_mode_false(saved, extension):
    model = load_model(saved["lambda", extension], safe_mode=False)
    assert isinstance(model.get_layer("doubler"), keras.layers.Lambda)
    values = np.ones((1, 4), np.float32)
    head = model.get_layer("head").get_weights()
    np.testing.assert_allclose(model.predict(values, verbose=0), (2.0 * values) @ head[0] + head[1], rtol=1e-6)


@pytest.mark.parametrize("extension", FORMATS)
def test_model_without_lambda_loads_in_safe_mode(saved, extension):
    assert load_model(saved["plain", extension]).name == "plain"


def _garbage(path):
    path.write_bytes(b"not a model " * 50)


def _truncated(source):
    def make(path):
        data = open(source, "rb").read()
        path.write_bytes(data[: len(data) // 2])

    return make


def _zip_without_config(path):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("metadata.json", "{}")


@pytest.mark.parametrize(
    "name, damage, match",
    [
        ("garbage.h5", "garbage", r"is not an \.h5 model file edgekeras can read \(OSError: .*file signature not found"),
        ("truncated.h5", "truncated .h5", r"is not an \.h5 model file edgekeras can read \(OSError: .*truncated file"),
        ("garbage.keras", "garbage", r"is not a \.keras model file edgekeras can read \(OSError: not a \.keras zip archive"),
        ("truncated.keras", "truncated .keras", r"is not a \.keras model file edgekeras can read"),
        ("noconfig.keras", "zip without config", r"is not a \.keras model file edgekeras can read \(KeyError: .*config\.json"),
        ("empty_saved_model", "empty directory",
         r"is not a SavedModel directory edgekeras can read \(OSError: SavedModel file does not exist"),
    ],
)
@pytest.mark.parametrize("safe_mode", [True, False])
def test_damaged_file_names_the_path(saved, tmp_path, name, damage, match, safe_mode):
    path = tmp_path / name
    makers = {
        "garbage": _garbage,
        "truncated .h5": _truncated(saved["plain", ".h5"]),
        "truncated .keras": _truncated(saved["plain", ".keras"]),
        "zip without config": _zip_without_config,
        "empty directory": lambda p: p.mkdir(),
    }
    makers[damage](path)
    with pytest.raises(ModelFileError, match=match + r".*Received: path='.*" + name + "'"):
        load_model(path, safe_mode=safe_mode)


def test_damaged_saved_model_metadata(saved, tmp_path):
    import shutil

    path = tmp_path / "saved_model"
    shutil.copytree(saved["plain", ""], path)
    (path / "keras_metadata.pb").write_bytes(b"\xff\xff\xff")
    with pytest.raises(ModelFileError, match=r"is not a SavedModel directory .*keras_metadata\.pb cannot be parsed"):
        load_model(path)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"safe_mode": "no"}, ValueError, r"Argument `safe_mode` must be True or False\. Received: safe_mode='no'"),
        ({"path_name": "model.pb"}, ValueError, r"Argument `path` must end in \.h5 or \.keras.*Received: path='.*model\.pb'"),
    ],
)
def test_load_model_bad_arguments(tmp_path, kwargs, error, match):
    kwargs = dict(kwargs)
    path = tmp_path / kwargs.pop("path_name", "model.h5")
    path.write_bytes(b"x")
    with pytest.raises(error, match=match):
        load_model(path, **kwargs)
