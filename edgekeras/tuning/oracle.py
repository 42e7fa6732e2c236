"""keras-tuner oracles for `EdgeTuner`, and its chief/worker mode.

`make_oracle` builds a random-search, Bayesian-optimization or Hyperband
oracle whose objective is `OBJECTIVE` (the trial's "score", maximized), which
ranks trials over budget below every trial within it.

In keras-tuner's distributed mode (`KERASTUNER_TUNER_ID`,
`KERASTUNER_ORACLE_IP`, `KERASTUNER_ORACLE_PORT`), one process, the chief,
only serves the oracle over gRPC (`serve_oracle`) and the workers run the
trials; `distributed_role` tells which one the current process is.

Example:

```python
from edgekeras.tuning import distributed_role, make_oracle

oracle = make_oracle("hyperband", max_epochs=9, factor=3, seed=1)
print(distributed_role())  # None outside keras-tuner's distributed mode
```
"""

import os
import time
from concurrent import futures

import grpc
import keras_tuner
from keras_tuner.src import protos
from keras_tuner.src.distribute import oracle_chief
from keras_tuner.src.distribute import utils as distribute_utils

from edgekeras.choices import ORACLES
from edgekeras.tuning.hparams import METRICS

__all__ = ["OBJECTIVE", "make_oracle", "check_oracle", "serve_oracle", "distributed_role"]

OBJECTIVE = keras_tuner.Objective("score", direction="max")
_METRIC_NAMES = tuple(tag for tag, _, _ in METRICS)


def make_oracle(kind="random", *, max_trials=10, max_epochs=3, factor=3, seed=None, objective=OBJECTIVE, **kwargs):
    """Returns a keras-tuner oracle for `EdgeTuner`, objective `score` (max).

    Args:
        kind: "random", "bayesian" or "hyperband".
        max_trials: number of trials (random and bayesian).
        max_epochs: largest float-phase length of a trial (hyperband).
        factor: reduction factor (hyperband).
        seed: random seed of the oracle.
        objective: the objective (default `OBJECTIVE`, which ranks trials
            over budget below every trial within it).
        **kwargs: other arguments of the oracle class.

    Returns:
        A `keras_tuner.oracles.*Oracle`.

    Example:

    ```python
    oracle = make_oracle("bayesian", max_trials=20, seed=1)
    ```
    """
    oracles = keras_tuner.oracles
    if kind == "random":
        return oracles.RandomSearchOracle(objective=objective, max_trials=max_trials, seed=seed, **kwargs)
    if kind == "bayesian":
        return oracles.BayesianOptimizationOracle(objective=objective, max_trials=max_trials, seed=seed, **kwargs)
    if kind == "hyperband":
        return oracles.HyperbandOracle(objective=objective, max_epochs=max_epochs, factor=factor, seed=seed, **kwargs)
    raise ValueError(f"Argument `kind` must be one of {', '.join(ORACLES)}. Received: kind={kind!r}")


def check_oracle(oracle):
    """Raises unless `oracle` can drive an `EdgeTuner` search.

    A trial reports only the tags of `edgekeras.tuning.METRICS`, so the
    oracle's objective must be one of them (`OBJECTIVE` is "score").

    Args:
        oracle: the oracle to check.

    Raises:
        ValueError: `oracle` is not a keras-tuner oracle, or its objective
            is not a trial metric.

    Example:

    ```python
    check_oracle(make_oracle("random", max_trials=4))
    ```
    """
    if not isinstance(oracle, keras_tuner.Oracle):
        raise ValueError(
            "Argument `oracle` must be a keras-tuner oracle, e.g. "
            f"edgekeras.tuning.make_oracle('random', max_trials=10). Received: oracle={oracle!r}"
        )
    if getattr(oracle.objective, "name", None) not in _METRIC_NAMES:
        raise ValueError(
            f"Argument `oracle` must have an objective named after a trial metric "
            f"({', '.join(_METRIC_NAMES)}); use edgekeras.tuning.OBJECTIVE. "
            f"Received: objective={oracle.objective!r}"
        )


def serve_oracle(oracle, poll_seconds=0.5):
    """Serves `oracle` to the workers as keras-tuner's chief, until the search ends.

    keras-tuner's own `start_server` polls the end of the search every 20 s
    once the first worker is told to stop; this one polls every
    `poll_seconds`, so a chief ends with its last worker. The address is
    `KERASTUNER_ORACLE_IP:KERASTUNER_ORACLE_PORT`. `EdgeTuner.search` calls
    it in the chief process; call it directly to serve an oracle without a
    tuner.

    Args:
        oracle: the keras-tuner oracle the workers share.
        poll_seconds: how often to check whether every worker is done.

    Raises:
        RuntimeError: the address cannot be listened on.

    Example:

    ```python
    # In the chief process (KERASTUNER_TUNER_ID=chief, KERASTUNER_ORACLE_IP=127.0.0.1,
    # KERASTUNER_ORACLE_PORT=8000); workers run EdgeTuner.search with the same variables.
    serve_oracle(make_oracle("random", max_trials=8))
    ```
    """
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    servicer = oracle_chief.OracleServicer(oracle)
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    address = f"{os.environ['KERASTUNER_ORACLE_IP']}:{os.environ['KERASTUNER_ORACLE_PORT']}"
    if not server.add_insecure_port(address):
        raise RuntimeError(f"The chief oracle cannot listen on {address}: the port is taken or invalid.")
    server.start()
    try:
        while not (servicer.stop_triggered and oracle_chief.exit_chief(oracle)):
            time.sleep(poll_seconds)
    finally:
        server.stop(grace=1.0)


def distributed_role():
    """This process's role in keras-tuner's distributed mode.

    Returns:
        "chief" or "worker" when `KERASTUNER_ORACLE_IP` and the other
        variables are set, else None.

    Example:

    ```python
    if distributed_role() != "worker":
        print("this process writes the search summary")
    ```
    """
    if not distribute_utils.has_chief_oracle():
        return None
    return "chief" if distribute_utils.is_chief_oracle() else "worker"
