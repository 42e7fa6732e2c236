"""Tests of `EdgeTuner`: whole searches with tiny models on tiny synthetic data."""

import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.request

import keras_tuner
import numpy as np
import pytest
import tensorflow as tf

from edgekeras import keras
from edgekeras.litert import evaluate_accuracy
from edgekeras.tuning import OBJECTIVE, Budget, EdgeTuner, SearchSpace, load_results, make_oracle, read_hparams

NUM_CLASSES = 3
SIDE = 8


def _images(count, seed, label_of=lambda i: i % NUM_CLASSES):
    rng = np.random.default_rng(seed)
    labels = np.array([label_of(i) for i in range(count)], np.int32)
    images = rng.uniform(-1.0, -0.3, (count, SIDE, SIDE, 3)).astype(np.float32)
    for index, label in enumerate(labels):
        images[index, ..., label] += 1.2  # each class has its own bright channel
    return images, labels


def _dataset(count, seed, **kwargs):
    images, labels = _images(count, seed, **kwargs)
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)


def build_tiny(hp):
    inputs = keras.Input((SIDE, SIDE, 3))
    x = keras.layers.Conv2D(6, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(NUM_CLASSES, activation="softmax", name="classifier")(x))


def build_sized(hp):
    """A model whose size depends on a user hyperparameter, for budget tests."""
    units = hp.Choice("units", [2, 256])
    inputs = keras.Input((SIDE, SIDE, 3))
    x = keras.layers.Flatten(name="flatten")(inputs)
    x = keras.layers.Dense(units, activation="relu", name="hidden")(x)
    return keras.Model(inputs, keras.layers.Dense(NUM_CLASSES, activation="softmax", name="classifier")(x))


FAST_SPACE = dict(learning_rate=(1e-3, 3e-2), final_sparsity=(0.3, 0.8), pruning_begin=0.0, pruning_end=(0.5, 1.0), qat_epochs=0)


def _tuner(tmp_path, oracle, hypermodel=build_tiny, name="search", space=None, **kwargs):
    kwargs.setdefault("conversion", "float32")
    kwargs.setdefault("verbose", 0)
    return EdgeTuner(
        oracle,
        hypermodel,
        search_space=space or SearchSpace(**FAST_SPACE),
        directory=str(tmp_path),
        project_name=name,
        eval_threads=1,
        **kwargs,
    )


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A finished 3-trial random search (one trial with QAT) and its data."""
    tmp_path = tmp_path_factory.mktemp("tune")
    train, validation = _dataset(48, 1), _dataset(24, 2)
    space = SearchSpace(**dict(FAST_SPACE, qat_epochs={"values": [0, 1]}))
    tuner = _tuner(tmp_path, make_oracle("random", max_trials=3, seed=3), space=space, conversion="int8")
    tuner.search(train, validation_data=validation)
    return tuner, train, validation


# -- budgets --------------------------------------------------------------------------


def test_budget_ranks_trials_within_budget_first(tmp_path):
    train, validation = _dataset(48, 1), _dataset(24, 2)
    budget = Budget(max_gzip_bytes=8000)  # "units=2" fits (~1 kB), "units=256" does not (~50 kB)
    tuner = _tuner(tmp_path, make_oracle("random", max_trials=4, seed=1), build_sized, budget=budget)
    tuner.search(train, validation_data=validation)
    results = tuner.results()
    over = [r for r in results if r.over_budget]
    within = [r for r in results if not r.over_budget]
    assert over and within, [r.hyperparameters for r in results]
    assert all(r.hyperparameters["units"] == 256 and r.over_budget == ["gzip_bytes"] for r in over)
    assert all(r.metrics["within_budget"] == 0.0 and r.score < 0 for r in over)
    assert all(r.metrics["within_budget"] == 1.0 and r.score == r.metrics["val_tflite_accuracy"] for r in within)
    assert results[: len(within)] == within  # best first: every within-budget trial before any other
    best = tuner.oracle.get_best_trials(1)[0]
    assert best.trial_id == within[0].trial_id
    summary = json.loads((tmp_path / "search" / "results.json").read_text())
    assert summary["best_trial"] == within[0].trial_id
    assert summary["budget"] == {"max_gzip_bytes": 8000, "max_latency_ms": None}


# -- run_trial scores the deployed file -------------------------------------------------


def test_run_trial_scores_the_tflite_file_not_the_keras_model(tmp_path, monkeypatch):
    import edgekeras.litert as export

    real_export = export.export_tflite
    exported = []

    def export_constant_class(model, path, conversion, **kwargs):
        # What ships always predicts class 0, whatever the Keras model learned.
        broken = keras.models.clone_model(model)
        broken.set_weights(model.get_weights())
        classifier = broken.get_layer("classifier")
        kernel, bias = classifier.get_weights()
        classifier.set_weights([np.zeros_like(kernel), np.array([5.0, 0.0, 0.0], np.float32)])
        exported.append(path)
        return real_export(broken, path, conversion, **kwargs)

    monkeypatch.setattr("edgekeras.tuning.scoring.export_tflite", export_constant_class)
    train = _dataset(60, 1)
    validation = _dataset(36, 2, label_of=lambda i: 0 if i % 6 == 0 else 1 + i % 2)  # 1/6 are class 0
    space = SearchSpace(learning_rate=3e-2, final_sparsity=0.5, pruning_begin=0.0, pruning_end=0.5, qat_epochs=0)
    tuner = _tuner(tmp_path, make_oracle("random", max_trials=1), space=space, float_epochs=3)
    tuner.search(train, validation_data=validation)
    (result,) = tuner.results()
    assert exported == [result.tflite_path]
    assert result.metrics["val_tflite_accuracy"] == pytest.approx(1 / 6)
    assert result.metrics["score"] == pytest.approx(1 / 6)
    assert result.metrics["val_keras_accuracy"] > 0.5  # the Keras model itself learned the task
    assert evaluate_accuracy(result.tflite_path, validation, progress=False).accuracy == pytest.approx(1 / 6)
    assert tuner.oracle.get_trial(result.trial_id).score == pytest.approx(1 / 6)


def test_post_training_int8_trials_keep_float_layers_in_float(tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    space = SearchSpace(learning_rate=1e-2, final_sparsity=0.5, pruning_begin=0.0, pruning_end=0.5, qat_epochs=0)
    tuner = _tuner(
        tmp_path, make_oracle("random", max_trials=1), space=space, conversion="int8", float_layers=["classifier"]
    )
    tuner.search(_dataset(48, 1), validation_data=_dataset(24, 2))
    (result,) = tuner.results()
    interpreter = Interpreter(model_path=result.tflite_path)
    tensors = {detail["index"]: detail["dtype"].__name__ for detail in interpreter.get_tensor_details()}
    kinds = {op["op_name"]: tensors[op["inputs"][0]] for op in interpreter._get_ops_details()}
    assert kinds["FULLY_CONNECTED"] == "float32" and kinds["CONV_2D"] == "int8"


def test_tuner_float_layers_argument_checked(tmp_path):
    with pytest.raises(ValueError, match=r"Argument `float_layers` must be a list of layer names.*Received: float_layers='classifier'"):
        _tuner(tmp_path, make_oracle("random", max_trials=1), float_layers="classifier")


def test_trials_export_the_qat_model_as_int8_and_keep_the_best(searched):
    tuner, _, validation = searched
    results = tuner.results()
    assert len(results) == 3
    for result in results:
        assert os.path.isfile(result.tflite_path) and os.path.isfile(result.model_path)
        assert result.conversion == "int8"
        assert result.epochs["qat"] == result.hyperparameters["qat_epochs"]
        assert 0.0 < result.metrics["sparsity"] < 1.0
        assert result.metrics["latency_ms"] > 0 and result.metrics["gzip_bytes"] > 0
        accuracy = evaluate_accuracy(result.tflite_path, validation, progress=False).accuracy
        assert result.metrics["val_tflite_accuracy"] == pytest.approx(accuracy)
    assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)
    model, tflite_path = tuner.best_model()
    assert isinstance(model, keras.Model)
    assert tflite_path == results[0].tflite_path
    assert tuner.get_best_models(1)[0].count_params() == model.count_params()
    assert {r.epochs["qat"] for r in results} == {0, 1}  # post-training int8 and QAT int8 both ran
    front = tuner.pareto_front()
    assert front
    for result in results:
        accuracy, size = result.metrics["val_tflite_accuracy"], result.metrics["gzip_bytes"]
        dominated = any(
            f.metrics["val_tflite_accuracy"] >= accuracy and f.metrics["gzip_bytes"] <= size
            and (f.metrics["val_tflite_accuracy"], f.metrics["gzip_bytes"]) != (accuracy, size)
            for f in front
        )
        assert dominated == (result not in front)
    table = tuner.format_results()
    assert "tflite acc" in table and results[0].trial_id in table.splitlines()[2]


# -- TensorBoard -------------------------------------------------------------------------


def test_hparams_are_written_and_readable_from_the_event_files(searched):
    tuner, _, _ = searched
    recorded = read_hparams(tuner.log_dir)
    assert recorded["experiment"]["hparams"] == ["learning_rate", "final_sparsity", "pruning_begin", "pruning_end", "qat_epochs"]
    assert {"val_tflite_accuracy", "val_keras_accuracy", "sparsity", "gzip_bytes", "latency_ms"} <= set(
        recorded["experiment"]["metrics"]
    )
    results = {r.trial_id: r for r in tuner.results()}
    assert set(recorded["trials"]) == set(results)
    for trial_id, session in recorded["trials"].items():
        result = results[trial_id]
        assert session["run"] == f"trial_{trial_id}"
        for name, value in result.hyperparameters.items():
            assert session["hparams"][name] == pytest.approx(value)
        for name, value in result.metrics.items():
            if not math.isnan(value):
                assert session["metrics"][name] == pytest.approx(value, rel=1e-6)
        # Each trial's training curves live in its own folder.
        for curves in ("train", "validation"):
            assert os.listdir(os.path.join(tuner.log_dir, session["run"], curves))


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _post_json(url, payload):
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_tensorboard_serves_the_hparams_of_every_trial(searched):
    """Starts `tensorboard --logdir` on loopback and reads the HParams dashboard's data."""
    tuner, _, _ = searched
    port = _free_port()
    command = [
        sys.executable, "-m", "tensorboard.main", "--logdir", tuner.log_dir, "--host", "127.0.0.1",
        "--port", str(port), "--load_fast", "false", "--reload_interval", "1",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/data/plugin/hparams"
    try:
        deadline = time.monotonic() + 60
        groups = []
        while time.monotonic() < deadline:
            try:
                experiment = _post_json(f"{base}/experiment", {"experimentName": ""})
                groups = _post_json(
                    f"{base}/session_groups", {"startIndex": 0, "sliceSize": 100, "allowedStatuses": ["STATUS_UNKNOWN"]}
                ).get("sessionGroups", [])
                if len(groups) == 3:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert process.poll() is None, "tensorboard exited"
        names = {info["name"] for info in experiment["hparamInfos"]}
        assert {"learning_rate", "final_sparsity", "qat_epochs"} <= names
        tags = {info["name"]["tag"] for info in experiment["metricInfos"]}
        assert {"val_tflite_accuracy", "gzip_bytes", "latency_ms", "sparsity"} <= tags
        results = {r.trial_id: r for r in tuner.results()}
        assert {group["name"] for group in groups} == set(results)
        for group in groups:
            values = {m["name"]["tag"]: m["value"] for m in group["sessions"][0]["metricValues"]}
            assert values["val_tflite_accuracy"] == pytest.approx(results[group["name"]].metrics["val_tflite_accuracy"])
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- resume ------------------------------------------------------------------------------


class CountingTuner(EdgeTuner):
    ran = []

    def run_trial(self, trial, *args, **kwargs):
        CountingTuner.ran.append(trial.trial_id)
        return super().run_trial(trial, *args, **kwargs)


def test_resume_does_not_redo_finished_trials(tmp_path):
    train, validation = _dataset(48, 1), _dataset(24, 2)
    CountingTuner.ran = []
    interrupted = {"once": False}

    def build_interrupted_once(hp):
        if len(CountingTuner.ran) == 2 and not interrupted["once"]:
            interrupted["once"] = True
            raise KeyboardInterrupt  # the user stops the search during trial 1
        return build_tiny(hp)

    tuner = CountingTuner(make_oracle("random", max_trials=3, seed=5), build_interrupted_once,
                          search_space=SearchSpace(**FAST_SPACE), conversion="float32", directory=str(tmp_path),
                          project_name="resume", verbose=0, eval_threads=1)
    with pytest.raises(KeyboardInterrupt):
        tuner.search(train, validation_data=validation)
    assert CountingTuner.ran == ["0", "1"]
    assert [r.trial_id for r in load_results(tmp_path / "resume")] == ["0"]
    finished_at = os.path.getmtime(tmp_path / "resume" / "trial_0" / "model.tflite")

    # Re-running the same search resumes: trial 0 is kept, 1 is redone, 2 is new.
    resumed = CountingTuner(make_oracle("random", max_trials=3, seed=5), build_tiny,
                            search_space=SearchSpace(**FAST_SPACE), conversion="float32", directory=str(tmp_path),
                            project_name="resume", verbose=0, eval_threads=1, overwrite=False)
    resumed.search(train, validation_data=validation)
    assert CountingTuner.ran == ["0", "1", "1", "2"]
    assert sorted(r.trial_id for r in resumed.results()) == ["0", "1", "2"]
    assert os.path.getmtime(tmp_path / "resume" / "trial_0" / "model.tflite") == finished_at
    assert set(read_hparams(resumed.log_dir)["trials"]) == {"0", "1", "2"}

    # Once finished, running it again runs nothing.
    again = CountingTuner(make_oracle("random", max_trials=3, seed=5), build_tiny,
                          search_space=SearchSpace(**FAST_SPACE), conversion="float32", directory=str(tmp_path),
                          project_name="resume", verbose=0, eval_threads=1)
    again.search(train, validation_data=validation)
    assert CountingTuner.ran == ["0", "1", "1", "2"]


def build_with_frozen_prefix(hp):
    inputs = keras.Input((SIDE, SIDE, 3))
    x = keras.layers.Conv2D(6, 3, activation="relu", name="frozen", trainable=False)(inputs)
    x = keras.layers.Conv2D(6, 1, activation="relu", name="conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(NUM_CLASSES, activation="softmax", name="classifier")(x))


def test_cached_features_train_the_top_but_deploy_the_whole_model(tmp_path):
    from edgekeras.litert import TFLiteModel

    train, validation = _dataset(48, 1), _dataset(24, 2)
    space = SearchSpace(**dict(FAST_SPACE, qat_epochs=1))
    tuner = _tuner(tmp_path, make_oracle("random", max_trials=1), build_with_frozen_prefix, space=space,
                   cache_features=True, cache_engine="keras", qat_steps_per_epoch=2, verbose=1)
    tuner.search(train, validation_data=validation)
    (result,) = tuner.results()
    assert result.conversion == "int8" and result.epochs == {"float": 1, "prune": 1, "qat": 1}
    assert TFLiteModel(result.tflite_path).input_shape[1:] == (SIDE, SIDE, 3)  # images in, not features
    assert os.listdir(os.path.join(tuner.trial_log_dir(result.trial_id), "qat", "train"))
    # The frozen prefix the cache was computed with is the one deployed, unchanged by QAT.
    keras.utils.set_random_seed(0)
    initial = build_with_frozen_prefix(None).get_layer("frozen").kernel.numpy()
    deployed = tuner.load_model(tuner.oracle.get_trial(result.trial_id))
    (kernel,) = [w.numpy() for w in deployed.weights if "frozen" in w.name and w.name.endswith("kernel:0")]
    np.testing.assert_array_equal(kernel, initial)


def build_slimmable(hp):
    inputs = keras.Input((SIDE, SIDE, 3), name="images")
    x = keras.layers.Conv2D(64, 3, padding="same", use_bias=False, name="conv0")(inputs)
    x = keras.layers.ReLU(name="relu0")(keras.layers.BatchNormalization(name="bn0")(x))
    x = keras.layers.Conv2D(64, 1, activation="relu", name="conv1")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(NUM_CLASSES, activation="softmax", name="classifier")(x))


def test_a_trial_below_target_latency_1_deploys_and_scores_the_slimmed_model(tmp_path):
    space = SearchSpace(**dict(FAST_SPACE, target_latency=0.8))
    tuner = _tuner(tmp_path, make_oracle("random", max_trials=1), build_slimmable, space=space, channel_steps_per_epoch=1)
    tuner.search(_dataset(32, 1), validation_data=_dataset(16, 2))
    (result,) = tuner.results()
    assert result.epochs == {"float": 1, "prune": 1, "qat": 0, "channels": 1}
    assert result.hyperparameters["target_latency"] == 0.8 and result.metrics["latency_ms"] > 0
    deployed = tuner.load_model(tuner.oracle.get_trial(result.trial_id))
    assert deployed.get_layer("conv0").filters < 64 or deployed.get_layer("conv1").filters < 64
    (session,) = read_hparams(tuner.log_dir)["trials"].values()
    assert session["hparams"]["target_latency"] == pytest.approx(0.8)


# -- oracles -------------------------------------------------------------------------------


def test_bayesian_oracle_runs_edgekeras_trials(tmp_path):
    train, validation = _dataset(48, 1), _dataset(24, 2)
    oracle = keras_tuner.oracles.BayesianOptimizationOracle(objective=OBJECTIVE, max_trials=2, num_initial_points=1, seed=2)
    tuner = _tuner(tmp_path, oracle)
    tuner.search(train, validation_data=validation)
    assert len(tuner.results()) == 2


def test_hyperband_continues_trials_from_their_float_weights(tmp_path):
    train, validation = _dataset(48, 1), _dataset(24, 2)
    tuner = _tuner(tmp_path, make_oracle("hyperband", max_epochs=2, factor=2, seed=4), prune_epochs=1)
    tuner.search(train, validation_data=validation)
    results = tuner.results()
    continued = [r for r in results if r.hyperparameters.get("tuner/trial_id")]
    assert continued, [r.hyperparameters for r in results]
    for result in results:
        values = result.hyperparameters
        assert result.epochs["float"] == values["tuner/epochs"] - values["tuner/initial_epoch"]
        assert os.path.isfile(os.path.join(result.trial_dir, "float.weights.h5"))
    for result in continued:
        parent = next(r for r in results if r.trial_id == result.hyperparameters["tuner/trial_id"])
        same = {k: v for k, v in result.hyperparameters.items() if not k.startswith("tuner/")}
        assert same == {k: v for k, v in parent.hyperparameters.items() if not k.startswith("tuner/")}


# -- argument checks ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arguments, match",
    [
        ({"oracle": "random"}, r"`oracle` must be a keras-tuner oracle"),
        ({"oracle": keras_tuner.oracles.RandomSearchOracle(objective="val_loss", max_trials=1)}, r"objective named after a trial metric"),
        ({"hypermodel": None}, r"`hypermodel` must be a keras_tuner.HyperModel"),
        ({"float_epochs": -1}, r"`float_epochs` must be an integer >= 0. Received: float_epochs=-1"),
        ({"conversion": "int4"}, r"`conversion` must be one of"),
        ({"budget": {"max_gzip_bytes": 1}}, r"`budget` must be an edgekeras.tuning.Budget"),
        ({"search_space": {"learning_rate": 1e-3}}, r"`search_space` must be an edgekeras.tuning.SearchSpace"),
        ({"latency_runs": 10}, r"`latency_runs` must be an integer >= 50"),
        ({"cache_engine": "tpu"}, r"`cache_engine` must be 'litert' or 'keras'"),
    ],
)
def test_tuner_rejects_bad_arguments(tmp_path, arguments, match):
    kwargs = {"oracle": make_oracle("random", max_trials=1), "hypermodel": build_tiny, "directory": str(tmp_path)}
    kwargs.update(arguments)
    with pytest.raises(ValueError, match=match):
        EdgeTuner(kwargs.pop("oracle"), kwargs.pop("hypermodel"), **kwargs)


def test_search_requires_validation_data(tmp_path):
    tuner = _tuner(tmp_path, make_oracle("random", max_trials=1))
    with pytest.raises(ValueError, match="`validation_data` is required"):
        tuner.search(_dataset(16, 1))


def test_search_refuses_epochs_which_the_tuner_sets(tmp_path):
    tuner = _tuner(tmp_path, make_oracle("random", max_trials=1))
    with pytest.raises(ValueError, match="Argument `epochs` is set per trial by EdgeTuner"):
        tuner.search(_dataset(16, 1), validation_data=_dataset(16, 2), epochs=3)


def build_keras3(hp):
    import keras as keras3

    inputs = keras3.Input((SIDE, SIDE, 3))
    x = keras3.layers.Conv2D(6, 3, activation="relu", name="conv")(inputs)
    x = keras3.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras3.Model(inputs, keras3.layers.Dense(NUM_CLASSES, activation="softmax", name="classifier")(x))


def test_a_keras3_hypermodel_is_searched_pruned_quantized_and_scored_on_its_int8_file(tmp_path):
    train, validation = _dataset(48, 1), _dataset(24, 2)
    space = SearchSpace(**dict(FAST_SPACE, qat_epochs=1))
    tuner = _tuner(tmp_path, make_oracle("random", max_trials=2, seed=3), build_keras3, space=space, conversion="int8")
    tuner.search(train, validation_data=validation)
    results = tuner.results()
    assert len(results) == 2
    for result in results:
        assert result.conversion == "int8" and result.epochs["qat"] == 1
        accuracy = evaluate_accuracy(result.tflite_path, validation, progress=False).accuracy
        assert result.metrics["val_tflite_accuracy"] == pytest.approx(accuracy)
        assert result.metrics["sparsity"] >= 0.9 * result.hyperparameters["final_sparsity"] * 0.9  # the classifier's bias stays
    model, _ = tuner.best_model()
    assert type(model).__module__.startswith("keras.")


class DiesAfterTheFirstResult(EdgeTuner):
    """Killed after trial 0 wrote its result, before keras-tuner recorded it."""

    died = False

    def run_trial(self, trial, *args, **kwargs):
        metrics = super().run_trial(trial, *args, **kwargs)
        if not DiesAfterTheFirstResult.died:
            DiesAfterTheFirstResult.died = True
            raise KeyboardInterrupt
        return metrics


def test_trial_killed_after_its_result_is_not_trained_again(tmp_path, capsys):
    train, validation = _dataset(48, 1), _dataset(24, 2)
    arguments = dict(search_space=SearchSpace(**FAST_SPACE), conversion="float32", directory=str(tmp_path),
                     project_name="late", verbose=1, eval_threads=1)
    DiesAfterTheFirstResult.died = False
    tuner = DiesAfterTheFirstResult(make_oracle("random", max_trials=2, seed=5), build_tiny, **arguments)
    with pytest.raises(KeyboardInterrupt):
        tuner.search(train, validation_data=validation)
    tflite = tmp_path / "late" / "trial_0" / "model.tflite"
    finished_at, first = os.path.getmtime(tflite), load_results(tmp_path / "late")[0]
    capsys.readouterr()

    resumed = EdgeTuner(make_oracle("random", max_trials=2, seed=5), build_tiny, overwrite=False, **arguments)
    resumed.search(train, validation_data=validation)
    assert "trial 0: finished before the interruption, result reused" in capsys.readouterr().out
    assert os.path.getmtime(tflite) == finished_at
    results = {r.trial_id: r for r in resumed.results()}
    assert sorted(results) == ["0", "1"] and results["0"].metrics == first.metrics
