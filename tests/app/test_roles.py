"""The "auto" report roles: chosen on the validation split, ties to post-training, kept for a resumed run."""

import types

from edgekeras.app import stages
from edgekeras.app.config import parse_config
from edgekeras.app.roles import pick, recorded_choices
from edgekeras.app.stages import RunContext, choose_roles
from edgekeras.app.state import RunState
from edgekeras.litert import Accuracy

VALIDATION, TEST = object(), object()


def context_for(tmp_path, names, **config):
    """A context after the export stage: `names` exported as small distinct files."""
    config = parse_config({"run": {"name": "r", "output_dir": str(tmp_path)}, **config}, source="test")
    state = RunState(config.run_dir, config, overwrite=False, enabled=True)
    exported = {}
    for name in names:
        path = tmp_path / "r" / "tflite" / f"{name}.tflite"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(name.encode())
        state.data["exports"][name] = state.record_file(str(path))
        exported[name] = (types.SimpleNamespace(path=str(path)), "float")
    state.save()
    return RunContext(
        config=config, progress=False, strategy=None, chief=True, distributed=False, state=state, started=0.0,
        data=types.SimpleNamespace(validation=VALIDATION, test=TEST), exported=exported,
    )


def fake_accuracy(monkeypatch, validation, test=None):
    """Replaces `evaluate_accuracy` in the stages: {file stem: accuracy} per split; records the calls."""
    calls = []

    def evaluate(path, dataset, *, num_threads, progress):
        name = path.rsplit("/", 1)[-1].removesuffix(".tflite")
        calls.append((name, dataset))
        scores = validation if dataset is VALIDATION else test
        return Accuracy(accuracy=scores[name], correct=round(scores[name] * 40), examples=40)

    monkeypatch.setattr(stages, "evaluate_accuracy", evaluate)
    return calls


def test_the_choice_reads_validation_not_test(tmp_path, monkeypatch):
    context = context_for(tmp_path, ["float32", "int8", "qat_int8", "pruned_int8", "pqat_int8"])
    # On test the other file of each pair would win.
    calls = fake_accuracy(
        monkeypatch,
        validation={"int8": 0.8, "qat_int8": 0.85, "pruned_int8": 0.75, "pqat_int8": 0.7},
        test={"int8": 0.9, "qat_int8": 0.6, "pruned_int8": 0.5, "pqat_int8": 0.95},
    )
    choose_roles(context)
    assert all(dataset is VALIDATION for _, dataset in calls) and len(calls) == 4
    assert context.role_choices == {
        "quantized": {"chosen": "qat_int8", "split": "validation", "examples": 40, "accuracy": {"int8": 0.8, "qat_int8": 0.85}},
        "pruned_quantized": {
            "chosen": "pruned_int8", "split": "validation", "examples": 40, "accuracy": {"pruned_int8": 0.75, "pqat_int8": 0.7},
        },
    }
    roles = context.config.roles(context.role_choices)
    assert (roles["qat_int8"], roles["int8"], roles["pruned_int8"], roles["pqat_int8"]) == (
        "quantized", "other", "pruned_quantized", "other",
    )


def test_a_tie_goes_to_the_post_training_file(tmp_path, monkeypatch):
    context = context_for(tmp_path, ["float32", "int8", "qat_int8", "pruned_int8", "pqat_int8"])
    fake_accuracy(monkeypatch, validation={"int8": 0.5, "qat_int8": 0.5, "pruned_int8": 0.4, "pqat_int8": 0.4})
    choose_roles(context)
    assert [choice["chosen"] for choice in context.role_choices.values()] == ["int8", "pruned_int8"]
    # Whatever order the accuracies come in.
    assert pick("quantized", {"qat_int8": 0.5, "int8": 0.5}, 10)["chosen"] == "int8"


def test_one_candidate_gets_the_role_without_evaluation(tmp_path, monkeypatch):
    context = context_for(tmp_path, ["float32", "int8", "pqat_int8"], qat={"quantize_float": False})
    context.data.validation = None  # nothing to evaluate on, and nothing needed
    calls = fake_accuracy(monkeypatch, validation={})
    choose_roles(context)
    assert calls == []
    assert context.role_choices == {
        "quantized": {"chosen": "int8", "accuracy": {}}, "pruned_quantized": {"chosen": "pqat_int8", "accuracy": {}},
    }


def test_no_candidate_leaves_the_role_empty(tmp_path, monkeypatch):
    context = context_for(tmp_path, ["float32", "int8", "qat_int8"], prune={"enabled": False}, report={"pruned": ""})
    fake_accuracy(monkeypatch, validation={"int8": 0.5, "qat_int8": 0.6})
    choose_roles(context)
    assert list(context.role_choices) == ["quantized"]
    assert "pruned_quantized" not in context.config.roles(context.role_choices).values()


def test_explicit_names_are_not_chosen(tmp_path, monkeypatch):
    context = context_for(
        tmp_path, ["float32", "int8", "qat_int8", "pruned_int8", "pqat_int8"],
        report={"quantized": "int8", "pruned_quantized": "pqat_int8"},
    )
    calls = fake_accuracy(monkeypatch, validation={})
    choose_roles(context)
    assert calls == [] and context.role_choices == {}


def test_a_resumed_run_reuses_the_recorded_choice(tmp_path, monkeypatch):
    names = ["float32", "int8", "qat_int8"]
    context = context_for(tmp_path, names, prune={"enabled": False}, report={"pruned": ""})
    calls = fake_accuracy(monkeypatch, validation={"int8": 0.5, "qat_int8": 0.6})
    choose_roles(context)
    assert len(calls) == 2
    # What a finished run's check and a resumed run see: the choice in state.json.
    assert context.config.roles(recorded_choices(context.config.run_dir))["qat_int8"] == "quantized"

    resumed = context_for(tmp_path, names, prune={"enabled": False}, report={"pruned": ""})  # the same files, a second attempt
    assert resumed.state.data["attempts"] == 2
    calls.clear()
    choose_roles(resumed)
    assert calls == [] and resumed.role_choices == context.role_choices

    # A file exported again is chosen again.
    (tmp_path / "r" / "tflite" / "int8.tflite").write_bytes(b"another int8 file")
    resumed.state.data["exports"]["int8"] = resumed.state.record_file(str(tmp_path / "r" / "tflite" / "int8.tflite"))
    calls = fake_accuracy(monkeypatch, validation={"int8": 0.7, "qat_int8": 0.6})
    resumed.role_choices = {}
    choose_roles(resumed)
    assert len(calls) == 2 and resumed.role_choices["quantized"]["chosen"] == "int8"
