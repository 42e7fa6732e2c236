"""Hyperparameter search with keras-tuner, scored on the deployed .tflite file.

`EdgeTuner` (tuner.py) is a keras-tuner tuner whose `run_trial` trains with
`EdgeTrainer`, exports the .tflite file and scores it with LiteRT on the
validation split; `SearchSpace` (search_space.py) declares what trials draw,
`Budget` ranks trials over a size or latency limit below every trial within
it, and hparams.py writes the TensorBoard HParams records.
"""

from edgekeras.tuning.hparams import METRICS, read_hparams, write_hparams_config, write_trial_hparams
from edgekeras.tuning.search_space import SearchSpace
from edgekeras.tuning.tuner import (
    OBJECTIVE,
    ORACLES,
    Budget,
    EdgeTuner,
    TrialResult,
    format_results,
    load_results,
    make_oracle,
    pareto_front,
)

__all__ = [
    "METRICS",
    "OBJECTIVE",
    "ORACLES",
    "Budget",
    "EdgeTuner",
    "SearchSpace",
    "TrialResult",
    "format_results",
    "load_results",
    "make_oracle",
    "pareto_front",
    "read_hparams",
    "write_hparams_config",
    "write_trial_hparams",
]
