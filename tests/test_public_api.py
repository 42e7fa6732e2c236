"""The public names are where users look for them."""

import pytest

import edgekeras


@pytest.mark.parametrize("name", edgekeras.__all__)
def test_every_top_level_name_resolves(name):
    assert getattr(edgekeras, name) is not None


def test_top_level_names_are_the_subpackages_objects():
    from edgekeras import callbacks, folders, litert, models, trainers, tuning

    assert edgekeras.MagnitudePruning is callbacks.MagnitudePruning
    assert edgekeras.TFLiteExport is callbacks.TFLiteExport
    assert edgekeras.EdgeTrainer is trainers.EdgeTrainer
    assert edgekeras.EdgeTuner is tuning.EdgeTuner
    assert edgekeras.export_tflite is litert.export_tflite
    assert edgekeras.build_transfer_model is models.build_transfer_model
    assert edgekeras.load_image_folders is folders.load_image_folders
    assert edgekeras.schedules.PolynomialDecay.__name__ == "PolynomialDecay"


def test_unknown_names_are_attribute_errors():
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        edgekeras.no_such_name  # noqa: B018


@pytest.mark.parametrize(
    "package, names",
    [
        ("callbacks", ["MagnitudePruning", "PreserveSparsity", "TFLiteExport"]),
        ("trainers", ["EdgeTrainer", "phase_optimizer"]),
        ("tuning", ["EdgeTuner", "Budget", "SearchSpace", "make_oracle", "load_results"]),
        ("schedules", ["PolynomialDecay", "ConstantSparsity", "MbyNSparsity", "polynomial_ramp"]),
        ("litert", ["export_tflite", "evaluate_tflite", "TFLiteModel", "convert"]),
        ("models", ["build_transfer_model", "flatten", "split_model", "save_model", "load_model", "freeze_before",
                    "get_architecture"]),
    ],
)
def test_packages_export_their_api(package, names):
    module = getattr(edgekeras, package)
    for name in names:
        assert name in module.__all__ and getattr(module, name) is not None


def test_errors_share_one_base_and_keep_their_builtin_type():
    from edgekeras.app.config import ConfigError
    from edgekeras.data import DataNotFoundError, DataSplitError
    from edgekeras.folders import ImageFolderError
    from edgekeras.io import DiskFullError
    from edgekeras.litert import ExportError, TFLiteFileError
    from edgekeras.models import ModelFileError, UnsafeModelError, WeightsError
    from edgekeras.quantization import UnquantizableLayersError

    for error, builtin in [
        (ConfigError, ValueError), (DataNotFoundError, FileNotFoundError), (DiskFullError, OSError),
        (ExportError, RuntimeError), (TFLiteFileError, ValueError), (ModelFileError, ValueError),
        (UnsafeModelError, ValueError), (WeightsError, ValueError), (UnquantizableLayersError, ValueError),
        (DataSplitError, ValueError), (ImageFolderError, ValueError),
    ]:
        assert issubclass(error, edgekeras.EdgekerasError) and issubclass(error, builtin), error
