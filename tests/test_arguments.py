"""Tests for edgekeras.arguments: the one positive-integer check, and that callers use it."""

import pathlib
import re

import numpy as np
import pytest

from edgekeras.arguments import check_positive_int
from edgekeras.data import representative_dataset
from edgekeras.images import check_load_arguments
from edgekeras.runtime import check_threads
from edgekeras.runtime.evaluate import evaluate_folder
from edgekeras.tuning.training import TrialTraining

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "edgekeras"


@pytest.mark.parametrize("value", [1, 7, np.int64(3)])
@pytest.mark.parametrize("allow_none", [False, True])
def test_positive_integers_pass(value, allow_none):
    assert check_positive_int(value, "count", allow_none=allow_none) is None


def test_none_passes_only_when_allowed():
    assert check_positive_int(None, "count", allow_none=True) is None
    with pytest.raises(ValueError, match=r"^Argument `count` must be a positive integer\. Received: count=None$"):
        check_positive_int(None, "count")


@pytest.mark.parametrize("value, shown", [(0, "0"), (-2, "-2"), (2.5, "2.5"), (True, "True"), ("3", "'3'"), (2.0, "2.0")])
@pytest.mark.parametrize("allow_none, allowed", [(False, "a positive integer"), (True, "a positive integer or None")])
def test_anything_else_is_refused_in_the_house_form(value, shown, allow_none, allowed):
    with pytest.raises(ValueError, match=rf"^Argument `count` must be {allowed}\. Received: count={re.escape(shown)}$"):
        check_positive_int(value, "count", allow_none=allow_none)


# Callers of every layer, each refusing a bad count with the shared message.
CALLERS = [
    (lambda: check_threads(True, "threads"), r"`threads` must be a positive integer or None\. Received: threads=True"),
    (lambda: check_load_arguments(32, 8, 0, 100, max_train_examples=0),
     r"`max_train_examples` must be a positive integer\. Received: max_train_examples=0"),
    (lambda: evaluate_folder("missing.tflite", "photos", batch_size=0),
     r"`batch_size` must be a positive integer\. Received: batch_size=0"),
    (lambda: list(representative_dataset([], num_examples=2.5)()),
     r"`num_examples` must be a positive integer\. Received: num_examples=2\.5"),
    (lambda: TrialTraining(qat_steps_per_epoch=0),
     r"`qat_steps_per_epoch` must be a positive integer or None\. Received: qat_steps_per_epoch=0"),
]


@pytest.mark.parametrize("call, message", CALLERS)
def test_callers_refuse_a_bad_count_with_the_shared_message(call, message):
    with pytest.raises(ValueError, match=rf"^Argument {message}$"):
        call()


# Modules that may spell the message themselves: a latency table's field is no
# argument (its message names the file), and the channel-pruning modules are
# converted with the rest of that work (issue #34).
OWN_MESSAGE = {"arguments.py", "channels/latency.py", "channels/shrink.py", "callbacks/channel_pruning.py"}


def test_no_module_hand_writes_the_positive_integer_check():
    # A hand-written copy drifts (bools accepted, numpy integers refused, another wording).
    spelled = [
        str(path.relative_to(PACKAGE))
        for path in sorted(PACKAGE.rglob("*.py"))
        if str(path.relative_to(PACKAGE)) not in OWN_MESSAGE
        and re.search(r"must be a positive integer(?: or None)?\. ", path.read_text())
    ]
    assert spelled == []
