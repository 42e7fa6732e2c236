"""Hyperparameter search with keras-tuner, scored on the deployed .tflite file.

- `tuner`: `EdgeTuner`, a keras-tuner tuner whose `run_trial` trains with
  `EdgeTrainer`, exports the .tflite file and scores it with LiteRT on the
  validation split.
- `search_space`: `SearchSpace`, what trials draw.
- `budget`: `Budget`, which ranks trials over a size or latency limit below
  every trial within it.
- `oracle`: `make_oracle`, `OBJECTIVE`, and keras-tuner's chief/worker mode
  (`serve_oracle`, `distributed_role`).
- `results`: `TrialResult`, `load_results`, `pareto_front`, `format_results`.
- `hparams`: the TensorBoard HParams records.
"""

from edgekeras.choices import ORACLES
from edgekeras.tuning.budget import Budget
from edgekeras.tuning.hparams import METRICS, read_hparams, write_hparams_config, write_trial_hparams
from edgekeras.tuning.oracle import OBJECTIVE, distributed_role, make_oracle, serve_oracle
from edgekeras.tuning.results import TrialResult, format_results, load_results, pareto_front
from edgekeras.tuning.search_space import SearchSpace
from edgekeras.tuning.tuner import EdgeTuner

__all__ = [
    "METRICS",
    "OBJECTIVE",
    "ORACLES",
    "Budget",
    "EdgeTuner",
    "SearchSpace",
    "TrialResult",
    "distributed_role",
    "format_results",
    "load_results",
    "make_oracle",
    "pareto_front",
    "read_hparams",
    "serve_oracle",
    "write_hparams_config",
    "write_trial_hparams",
]
