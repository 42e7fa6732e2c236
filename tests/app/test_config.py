"""`edgekeras run` configs: TOML parsing, defaults, and one error per branch."""

import datetime
import pathlib
import tomllib

import pytest

from edgekeras.app.config import (
    Config,
    ConfigError,
    config_to_toml,
    default_config_toml,
    load_config,
    parse_config,
    parse_section,
)
from edgekeras.app.inputs import input_normalization
from edgekeras.app.sections import TrainSection, TuneSettings

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"


def write(tmp_path, text):
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def write_bytes(tmp_path, data):
    path = tmp_path / "config.toml"
    path.write_bytes(data)
    return path


def test_empty_file_gives_defaults(tmp_path):
    config = load_config(write(tmp_path, ""))
    assert config == Config()
    assert config.source.endswith("config.toml")
    assert config.run_dir == "runs/default"


def test_values_are_read_and_converted(tmp_path):
    config = load_config(write(tmp_path, """
[run]
name = "x"
[data]
image_size = 96
max_train_examples = 500
[train]
learning_rate = 1   # an integer where a float is expected is fine
[export]
conversions = ["float32", "int8"]
io_dtype = "uint8"
[evaluate]
latency_threads = [1]
"""))
    assert (config.run.name, config.data.image_size, config.data.max_train_examples) == ("x", 96, 500)
    assert config.train.learning_rate == 1.0 and isinstance(config.train.learning_rate, float)
    assert config.export.conversions == ("float32", "int8") and config.evaluate.latency_threads == (1,)


def test_variant_names_and_roles():
    config = Config()
    assert config.variant_names() == [
        "float32", "float16", "dynamic_int8", "int8", "qat_int8",
        "pruned_float32", "pruned_sparse_float32", "pruned_int8", "pqat_int8",
    ]
    # "auto" roles not chosen yet are empty; a choice gives them to its variant.
    roles = config.roles({})
    assert [name for name, role in roles.items() if role != "other"] == ["float32", "pruned_float32"]
    roles = config.roles({"quantized": {"chosen": "qat_int8"}, "pruned_quantized": {"chosen": "pruned_int8"}})
    assert {name: role for name, role in roles.items() if role != "other"} == {
        "float32": "original", "qat_int8": "quantized", "pruned_float32": "pruned", "pruned_int8": "pruned_quantized",
    }


def test_toml_round_trip(tmp_path):
    config = parse_config({"data": {"image_size": 64}, "prune": {"target_sparsity": 0.5}})
    path = write(tmp_path, config_to_toml(config, header="resolved"))
    assert load_config(path) == config
    assert default_config_toml().startswith("# edgekeras run: default values")


@pytest.mark.parametrize("value", [True, False, "auto"])
def test_cache_features_takes_true_false_or_auto(tmp_path, value):
    config = parse_config({"train": {"cache_features": value}})
    assert config.train.cache_features == value
    assert load_config(write(tmp_path, config_to_toml(config))) == config


@pytest.mark.parametrize("name", ["default.toml", "seed.toml", "demo.toml", "mobilenet_v3_small.toml"])
def test_shipped_configs_are_valid(name):
    load_config(CONFIGS / name)


@pytest.mark.parametrize(
    "values, match",
    [
        ({"trian": {}}, r"Unknown section `trian` at the top level.* Did you mean `train`\?"),
        (
            {"epochs": 3},
            r"Unknown key `epochs` at the top level.* `epochs` is a key of \[train\], \[prune\], \[channels\], \[qat\]: write it below",
        ),
        (
            {"train": {"epoch": 3}},
            r"Unknown key `epoch` in section \[train\] of <dict>\. Valid keys of \[train\]:.* Did you mean `epochs`\?",
        ),
        ({"train": 3}, r"Config section \[train\] in <dict> must be a table"),
        ({"train": {"epochs": "3"}}, r"Config key `train.epochs` must be an integer. Received: train.epochs='3'"),
        ({"train": {"epochs": True}}, r"`train.epochs` must be an integer"),
        ({"train": {"epochs": -1}}, r"`train.epochs` must be an integer >= 0"),
        ({"train": {"learning_rate": "fast"}}, r"`train.learning_rate` must be a number"),
        ({"train": {"learning_rate": 0}}, r"`train.learning_rate` must be > 0"),
        ({"train": {"learning_rate": float("inf")}}, r"`train.learning_rate` must be a finite number\. Received: train.learning_rate=inf"),
        ({"model": {"alpha": float("nan")}}, r"`model.alpha` must be a finite number\. Received: model.alpha=nan"),
        ({"train": {"optimizer": "lion"}}, r"`train.optimizer` must be one of 'adam', 'sgd'"),
        ({"data": {"augment": "yes"}}, r"`data.augment` must be true or false"),
        ({"run": {"name": "a/b"}}, r"`run.name` must be a non-empty name without '/'"),
        ({"run": {"output_dir": ""}}, r"`run.output_dir` must be a non-empty path"),
        ({"run": {"seed": 1.5}}, r"`run.seed` must be an integer"),
        ({"data": {"image_size": 16}}, r"`data.image_size` must be an integer >= 32"),
        ({"data": {"dataset": 3}}, r"`data.dataset` must be a string"),
        ({"data": {"data_dir": 3}}, r"`data.data_dir` must be a string"),
        ({"model": {"alpha": 0}}, r"`model.alpha` must be > 0"),
        ({"model": {"weights": ""}}, r"`model.weights` must be"),
        ({"model": {"dropout": 1.0}}, r"`model.dropout` must be in \[0, 1\)"),
        ({"prune": {"target_sparsity": 1.0}}, r"`prune.target_sparsity` must be in \[0, 1\)"),
        ({"prune": {"target_sparsity": 0.0}}, r"`prune.target_sparsity` must be > 0 when pruning is enabled"),
        ({"prune": {"initial_sparsity": 0.8, "target_sparsity": 0.5}}, r"`prune.initial_sparsity` must be <= target_sparsity"),
        ({"prune": {"ramp_fraction": 0}}, r"`prune.ramp_fraction` must be in \(0, 1\]"),
        ({"prune": {"schedule": "cubic"}}, r"`prune.schedule` must be one of 'polynomial', 'constant'"),
        ({"prune": {"policy": "some"}}, r"`prune.policy` must be one of"),
        ({"prune": {"epochs": 0}}, r"`prune.epochs` must be an integer >= 1"),
        ({"prune": {"power": 0}}, r"`prune.power` must be > 0"),
        ({"prune": {"allocation": "layerwise"}}, r"`prune.allocation` must be one of 'uniform', 'global'"),
        ({"prune": {"max_layer_sparsity": 0.9}},
         r"`prune.max_layer_sparsity` must be 0 \(no bound\) or in \[target_sparsity, 1\) with allocation = \"global\""),
        ({"prune": {"allocation": "global", "max_layer_sparsity": 0.5, "target_sparsity": 0.8}},
         r"`prune.max_layer_sparsity` must be .*target_sparsity=0.8"),
        ({"prune": {"lr_schedule": "step"}}, r"`prune.lr_schedule` must be one of 'constant', 'cosine'"),
        ({"prune": {"warmup_fraction": 0.1}}, r"`prune.warmup_fraction` must be 0 unless lr_schedule = \"cosine\""),
        ({"prune": {"warmup_fraction": 1.0, "lr_schedule": "cosine"}}, r"`prune.warmup_fraction` must be in \[0, 1\)"),
        ({"prune": {"distill_weight": 1.5}}, r"`prune.distill_weight` must be in \[0, 1\]"),
        ({"prune": {"temperature": 0}}, r"`prune.temperature` must be > 0"),
        ({"qat": {"epochs": -2}}, r"`qat.epochs` must be an integer >= 0"),
        ({"qat": {"learning_rate": -1e-4}}, r"`qat.learning_rate` must be > 0"),
        ({"qat": {"lr_schedule": "step"}}, r"`qat.lr_schedule` must be one of 'constant', 'cosine'"),
        ({"export": {"conversions": "float32"}}, r"`export.conversions` must be a list"),
        ({"export": {"conversions": ["float32", "int4"]}}, r"`export.conversions` must be a list of float32"),
        ({"export": {"conversions": ["float32", "float32"]}}, r"`export.conversions` must be a list without duplicates"),
        ({"export": {"conversions": ["int8"]}}, r'must be a list that includes "float32"'),
        ({"export": {"io_dtype": "int16"}}, r"`export.io_dtype` must be one of 'float32', 'int8', 'uint8'"),
        (
            {"export": {"io_dtype": "int8", "int8_float_layers": ["expanded_conv_depthwise"]}},
            r"`export.int8_float_layers` must be empty unless io_dtype = \"float32\"",
        ),
        ({"export": {"int8_float_layers": [""]}}, r"`export.int8_float_layers` must be a list of layer names"),
        ({"qat": {"skip_layers": [3]}}, r"`qat.skip_layers` must be a list of layer names\. Received: qat.skip_layers=\[3\]"),
        # A value that is no list gets the same message as a list with a bad item.
        ({"qat": {"skip_layers": "Conv_1"}}, r"`qat.skip_layers` must be a list of layer names\. Received: qat.skip_layers='Conv_1'"),
        ({"evaluate": {"latency_threads": 2}}, r"`evaluate.latency_threads` must be a non-empty list of positive integers"),
        ({"distribute": {"devices": "/gpu:0"}}, r"`distribute.devices` must be a list of device names"),
        ({"export": {"min_agreement": 2}}, r"`export.min_agreement` must be in \[0, 1\]"),
        ({"export": {"verify_examples": 0}}, r"`export.verify_examples` must be an integer >= 1"),
        ({"evaluate": {"split": "train"}}, r"`evaluate.split` must be one of 'test', 'validation'"),
        ({"evaluate": {"latency_runs": 10}}, r"`evaluate.latency_runs` must be an integer >= 50"),
        ({"evaluate": {"latency_threads": []}}, r"`evaluate.latency_threads` must be a non-empty list"),
        ({"evaluate": {"num_threads": 0}}, r"`evaluate.num_threads` must be an integer >= 1"),
        (
            {"train": {"cache_features": "yes"}},
            r"Config key `train.cache_features` must be true, false or \"auto\"\. Received: train.cache_features='yes'",
        ),
        ({"report": {"quantized": "int4"}}, r"`report.quantized` must name a variant this config exports"),
        (
            {"qat": {"epochs": 0}, "report": {"quantized": "qat_int8"}},
            r"`report.quantized` must name a variant this config exports .*Received: report.quantized='qat_int8'\. "
            r"'qat_int8' needs `qat.epochs` > 0",
        ),
        (
            {"data": {"validation_size": 0}},
            r"Config key `report.quantized` must name a variant when there is no validation split: \"auto\" chooses between "
            r"'int8' and 'qat_int8' by their accuracy on the validation split, never on the test split\. "
            r"Received: report.quantized='auto', data.validation_size=0\. Name the variant "
            r"\(report.quantized = \"int8\" or \"qat_int8\"\) or set `data.validation_size` > 0\.",
        ),
        (
            {"data": {"validation_size": 0}, "report": {"quantized": "int8"}},
            r"`report.pruned_quantized` must name a variant when there is no validation split: .*'pruned_int8' and 'pqat_int8'",
        ),
        ({"report": {"pruned": "auto"}}, r"`report.pruned` must name a variant .*\"auto\" is for `report.quantized` and"),
        (
            {"prune": {"enabled": False}},
            r"`report.pruned` must name a variant .*'pruned_float32' needs `prune.enabled` = true and 'float32' in "
            r"`export.pruned_conversions`",
        ),
        ({"report": {"pruned": "float32"}}, r"names 'float32', which already holds the role 'original' \(`report.original`\)"),
        ({"report": {"original": ""}}, r"`report.original` must name the float reference"),
    ],
)
def test_validation_errors(values, match):
    with pytest.raises(ConfigError, match=match):
        parse_config(values)


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="Argument `config` names a file that does not exist"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(write(tmp_path, "[train\nepochs = 1"))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda tmp_path: tmp_path, r"Argument `config` names a file that cannot be read \(Is a directory\)\. Received: config='.*'"),
        (lambda tmp_path: write_bytes(tmp_path, "[run]\nname = 'café'\n".encode("latin-1")), r"is not valid TOML: it is not UTF-8 text"),
    ],
)
def test_unreadable_config_file(tmp_path, make, match):
    with pytest.raises(ConfigError, match=match):
        load_config(make(tmp_path))


def test_toml_round_trip_escapes_control_characters():
    config = parse_config({"run": {"name": 'tab\tquote"back\\slash\nnew\x7fline'}})
    assert parse_config(tomllib.loads(config_to_toml(config))) == config


def test_error_names_the_file(tmp_path):
    path = write(tmp_path, "[prune]\nsparsity = 0.5\n")
    with pytest.raises(ConfigError, match=r"Unknown key `sparsity` in section \[prune\] of .*config.toml"):
        load_config(path)


def test_one_parser_for_run_and_tune_sections():
    assert parse_section("train", TrainSection, {"epochs": 5}, "<dict>") == TrainSection(epochs=5)
    tables = ("space", "budget")
    values = {"oracle": "bayesian", "space": {}, "int8_float_layers": ["a"]}
    settings = parse_section("tune", TuneSettings, values, "<dict>", tables=tables)
    assert (settings.oracle, settings.int8_float_layers) == ("bayesian", ("a",))
    with pytest.raises(
        ConfigError,
        match=r"Unknown key `trials` in section \[tune\] of <dict>\. Valid keys of \[tune\]: .*top, "
        r"and the tables \[tune.space\], \[tune.budget\]\. Did you mean `max_trials`\?",
    ):
        parse_section("tune", TuneSettings, {"trials": 3}, "<dict>", tables=tables)
    with pytest.raises(ConfigError, match=r"Config key `tune.directory` must be a non-empty string\. Received: tune.directory=''"):
        parse_section("tune", TuneSettings, {"directory": ""}, "<dict>", tables=tables)
    with pytest.raises(ConfigError, match=r"Config key `tune.factor` must be an integer >= 2"):
        parse_section("tune", TuneSettings, {"factor": 1}, "<dict>", tables=tables)


def test_data_and_model_defaults_and_what_they_resolve_to():
    config = Config()
    assert (config.data.resolved_dataset, config.model.resolved_architecture, config.model.kind) == (
        "cifar10", "mobilenet_v2", "architecture"
    )
    assert (config.data.normalization, config.model.trainable_from) == ("auto", "auto")
    assert input_normalization(config.data, config.model) == "minus_one_to_one"
    config = parse_config({
        "data": {"directory": "photos", "test_directory": "photos_test", "normalization": "zero_to_one"},
        "model": {"factory": "mymodels.small:build", "factory_args": {"width": 8, "name": "x y", "sizes": [1, 2]}},
    })
    assert (config.data.resolved_dataset, config.model.kind, config.model.resolved_architecture) == ("", "factory", "")
    assert input_normalization(config.data, config.model) == "zero_to_one"
    assert config.model.factory_args == {"width": 8, "name": "x y", "sizes": [1, 2]}
    # A factory's arguments survive the resolved config.toml of a run directory.
    assert parse_config(tomllib.loads(config_to_toml(config))) == config
    resnet = parse_config({"model": {"architecture": "resnet50", "weights": "none"}})
    assert input_normalization(resnet.data, resnet.model) == "caffe"
    assert parse_config({"model": {"file": "trained.h5"}, "data": {"normalization": "pixels"}}).model.kind == "file"


@pytest.mark.parametrize(
    "values, match",
    [
        (
            {"model": {"architecture": "vgg16"}},
            r"Config key `model.architecture` must be one of 'mobilenet_v2', 'mobilenet_v3_small', .*'resnet50'\. "
            r"Received: model.architecture='vgg16'",
        ),
        (
            {"model": {"architecture": "resnet50", "factory": "m:f"}, "data": {"normalization": "caffe"}},
            r"Config keys `model.architecture`, `model.factory`, `model.file` each name the model: set one of them\. "
            r"Received: model.architecture='resnet50', model.factory='m:f'",
        ),
        ({"model": {"factory": "mymodels.build"}}, r"`model.factory` must be a \"package.module:function\" reference"),
        ({"model": {"factory": "a:b", "factory_args": 3}}, r"`model.factory_args` must be a table\. Received: model.factory_args=3"),
        ({"model": {"factory_args": {"width": 8}}}, r"`model.factory_args` must be an empty table unless `model.factory` is set"),
        (
            {"model": {"factory": "a:b", "factory_args": {"when": datetime.date(2026, 1, 1)}}},
            r"`model.factory_args` must be a table of strings, finite numbers, booleans, lists and tables",
        ),
        ({"model": {"architecture": "efficientnet_b0", "alpha": 0.5}}, r"`model.alpha` must be 1.0 for 'efficientnet_b0'"),
        (
            {"model": {"file": "m.h5", "weights": "none"}, "data": {"normalization": "pixels"}},
            r"`model.weights` must be left at \"imagenet\" with `model.file` \(a model of yours is used as it is\)",
        ),
        (
            {"model": {"factory": "a:b", "dropout": 0.2}, "data": {"normalization": "pixels"}},
            r"`model.dropout` must be 0 with `model.factory`",
        ),
        (
            {"model": {"factory": "a:b", "alpha": 0.5}, "data": {"normalization": "pixels"}},
            r"`model.alpha` must be 1.0 with `model.factory`",
        ),
        (
            {"model": {"file": "m.h5", "trainable_from": ""}, "data": {"normalization": "pixels"}},
            r"`model.trainable_from` must be \"auto\" \(the model's own trainable flags\) or a layer name with `model.file`",
        ),
        (
            {"model": {"file": "m.h5"}},
            r"Config key `data.normalization` must say how the model of `model.file` expects its pixels scaled: one of "
            r"'minus_one_to_one', .*\(\"auto\" follows `model.architecture` only\)\. Received: data.normalization='auto'",
        ),
        ({"data": {"normalization": "imagenet"}}, r"`data.normalization` must be one of 'auto', 'minus_one_to_one'"),
        (
            {"data": {"dataset": "cifar10", "directory": "photos"}},
            r"Config keys `data.dataset`, `data.directory` each name where the images come from: set one of them\. "
            r"Received: data.dataset='cifar10', data.directory='photos'",
        ),
        ({"data": {"test_directory": "t"}}, r"`data.test_directory` must be \"\" unless `data.directory` is set"),
        (
            {"data": {"directory": "d", "test_directory": "t", "test_size": 10}},
            r"`data.test_size` must be 0 when `data.test_directory` is set",
        ),
        ({"data": {"directory": "d", "data_dir": "tfds"}}, r"`data.data_dir` must be \"\" when `data.directory` is set"),
        ({"data": {"test_size": -1}}, r"`data.test_size` must be an integer >= 0"),
    ],
)
def test_data_and_model_errors_name_the_key(values, match):
    with pytest.raises(ConfigError, match=match):
        parse_config(values)


def test_auto_roles_need_no_validation_split_without_a_choice():
    # One candidate (no QAT): it gets the role, nothing is chosen, no validation split needed.
    config = parse_config({"data": {"validation_size": 0}, "qat": {"epochs": 0}})
    roles = config.roles({})
    assert roles["int8"] == "quantized" and roles["pruned_int8"] == "pruned_quantized"
    # A candidate another key names is none: `pruned_int8` holds `pruned`, so pqat_int8 is the one left.
    config = parse_config({"data": {"validation_size": 0}, "report": {"quantized": "int8", "pruned": "pruned_int8"}})
    assert config.roles({})["pqat_int8"] == "pruned_quantized"
    # No candidate: the role stays empty.
    config = parse_config({"export": {"conversions": ["float32"], "pruned_conversions": ["float32"]}, "qat": {"epochs": 0}})
    assert set(config.roles({}).values()) == {"original", "pruned"}


def test_explicit_roles_work_as_before():
    config = parse_config({"data": {"validation_size": 0}, "report": {"quantized": "int8", "pruned_quantized": "pqat_int8"}})
    roles = config.roles()
    assert (roles["int8"], roles["qat_int8"], roles["pqat_int8"]) == ("quantized", "other", "pruned_quantized")


def test_qat_distillation_keys_are_checked():
    with pytest.raises(ConfigError, match=r"`qat.distill_weight` must be in \[0, 1\]\. Received: qat.distill_weight=2"):
        parse_config({"qat": {"distill_weight": 2.0}}, source="test")
    with pytest.raises(ConfigError, match=r"`qat.temperature` must be > 0"):
        parse_config({"qat": {"temperature": 0.0}}, source="test")
