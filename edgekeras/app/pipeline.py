"""`edgekeras run --config FILE.toml`: the whole edge recipe as one command.

load data -> build model -> train -> prune -> QAT (and PQAT) -> export every
variant -> evaluate every .tflite on the test split with LiteRT -> report,
all into one run directory:

```
runs/<name>/
  config.toml          the resolved config (every key, defaults included)
  models/              float, pruned, qat, pqat (Keras models: .h5 on tf_keras, .keras on Keras 3)
  tflite/              one verified .tflite per variant
  logs/                TensorBoard: training curves per phase, report scalars + plot
  report.json, report.md, pareto.png
  state.json           progress: config fingerprint, finished stages, checksums
  checkpoints/         Keras BackupAndRestore checkpoints, one per training phase
  cache/               cached activations (.npy, float16); deleted when the run ends
```

Runs resume. Every stage records its result in `state.json` (written
atomically) and every artifact is written to a temporary name and renamed. A
run killed at any point (even by SIGKILL) and started again with the same
command continues: cached activations are reloaded (memory-mapped) if their
checksum matches, every training phase restarts from its last finished epoch
(finished phases are restored, not retrained), and .tflite files and
evaluations whose checksums match are reused. A finished run started again is
a no-op; `overwrite=True` (`--overwrite`) starts it over. A run directory made
by another config is refused, so one config can never destroy another's
results.

CPU cost is designed in. With `train.cache_features` the model is split at
the first layer that has trainable weights: the frozen prefix runs once over
the training and validation images (through LiteRT/XNNPACK by default, about
4x faster than tf_keras on CPU) and the float and pruning phases train only
the trainable top on the cached activations. The top shares its layers with
the full model, so the full model holds the trained weights afterwards and is
what gets exported. Cached activations are computed without re-augmentation
per epoch (`train.cache_passes` caches several augmented passes).
Quantization-aware training always runs on the whole model with images (the
quantized network is the whole network); `qat.steps_per_epoch` bounds it.

`run` is a loop over named stages (`edgekeras.app.stages.STAGES`: data_and_model, trial_conversion, cache_features,
train_and_prune, qat, save_models, export, choose_roles, evaluate, report), each a function
of a `RunContext` that the earlier stages filled in; the stage name is the
key of its time in `RunResult.timings` and `state.json`. The run state lives
in `edgekeras.app.state`, config -> object factories in
`edgekeras.app.factories`.

Example:

```python
from edgekeras.app.config import load_config
from edgekeras.app.pipeline import run

result = run(load_config("configs/demo.toml"))
print(result.table)
```
"""

import dataclasses
import os
import time

import tensorflow as tf

from edgekeras.app.config import config_to_toml
from edgekeras.app.factories import build_model, load_data, resolve_weights
from edgekeras.app.report import format_table
from edgekeras.app.roles import recorded_choices
from edgekeras.app.stages import CHIEF_ONLY, STAGES, RunContext
from edgekeras.app.state import RunDirectoryError, RunState, log, verify_run_dir
from edgekeras.backend import by_name
from edgekeras.distribute import get_strategy, is_chief, worker_id
from edgekeras.io import atomic_write_text, read_json
from edgekeras.memory import return_freed_heap

__all__ = ["RunResult", "RunDirectoryError", "run", "verify_run_dir", "load_data", "build_model", "resolve_weights"]


@dataclasses.dataclass
class RunResult:
    """What `run` produced.

    Attributes:
        run_dir: the run directory.
        report: the report dict (as in report.json); None on a non-chief worker of a
            multi-worker run, which trains and writes nothing.
        table: the Markdown table (as in report.md).
        timings: seconds per stage.
    """

    run_dir: str
    report: dict
    table: str
    timings: dict


def _finished_result(state, run_dir, wanted):
    """The `RunResult` of a finished run, or None if any file is gone or changed.

    `wanted` is the config's {variant: role}; a report with other roles is
    written again.
    """
    if not all(os.path.isfile(os.path.join(run_dir, name)) for name in ("report.md", "pareto.png")):
        return None
    if not all(state.valid_file(entry) for entry in state.data["exports"].values()):
        return None
    report = read_json(os.path.join(run_dir, "report.json"))
    if not isinstance(report, dict):
        return None
    try:
        table = format_table(report)
        roles = {variant["name"]: variant["role"] for variant in report["variants"]}
    except (ValueError, KeyError, TypeError):
        return None
    if roles != {name: wanted.get(name, "other") for name in roles}:
        return None
    return RunResult(run_dir=run_dir, report=report, table=table, timings=report.get("timings", {}))


def _start(config, progress, overwrite, verbose=False):
    """The context of a run; a run directory of another config is refused here."""
    started = time.perf_counter()
    # Made first: MultiWorkerMirroredStrategy must exist before other TF work.
    strategy = get_strategy(
        config.distribute.strategy,
        devices=list(config.distribute.devices) or None,
        communication=config.distribute.communication,
    )
    chief = is_chief(strategy)
    return RunContext(
        config=config,
        progress=config.evaluate.progress if progress is None else progress,
        strategy=strategy,
        chief=chief,
        # The TFLite converter cannot trace a model whose variables are
        # distributed: conversions and saved files use plain copies.
        distributed=strategy is not tf.distribute.get_strategy(),
        state=RunState(config.run_dir, config, overwrite=overwrite, enabled=chief),
        started=started,
        verbose=verbose,
    )


def _finished_run(context):
    """The result of this config's finished run if its files are intact, else None."""
    state, run_dir = context.state, context.config.run_dir
    if state.finished:
        finished = _finished_result(state, run_dir, context.config.roles(recorded_choices(run_dir)))
        if finished is not None:
            log(f"{run_dir} holds this config's finished run: nothing to do (--overwrite runs it again)")
            return finished
        log(f"{run_dir} holds this config's finished run, but files are missing or changed: rebuilding them")
        state.data["finished"] = False
    elif state.data["attempts"] > 1:
        log(f"resuming the run in {run_dir} (attempt {state.data['attempts']})")
    return None


def _prepare_run_dir(context):
    """The chief writes the state, the directories and the resolved config.toml."""
    config = context.config
    if not context.chief:
        log(
            f"{worker_id(context.strategy)} of a {type(context.strategy).__name__} cluster: training only, "
            f"the chief writes {config.run_dir}"
        )
        return
    context.state.save()
    for directory in ("tflite", "models", "logs"):
        os.makedirs(context.path(directory), exist_ok=True)
    data_dir = config.data.data_dir or os.environ.get("TFDS_DATA_DIR") or "TFDS default"
    header = (
        f"edgekeras run: resolved config (from {config.source})\n"
        f"model.weights resolved to: {resolve_weights(config.model.weights, config.model.resolved_architecture or 'mobilenet_v2')}\n"
        f"data.data_dir resolved to: {data_dir}"
    )
    atomic_write_text(context.path("config.toml"), config_to_toml(config, header=header))


def _existing_ancestor(path):
    path = os.path.abspath(path)
    while not os.path.isdir(path):
        path = os.path.dirname(path)
    return path


def _remove_empty_dirs(run_dir, keep):
    """Removes the empty directories under and above `run_dir`, up to `keep`.

    A non-chief worker's `BackupAndRestore` writes to a temporary directory
    and deletes it when training ends, but leaves its parents behind; only
    empty directories are removed, so a chief's files on a shared disk are safe.
    """
    keep = os.path.abspath(keep)
    path = os.path.abspath(run_dir)
    if os.path.isdir(path):
        for root, _, _ in sorted(os.walk(path), key=lambda entry: -len(entry[0])):
            if root != keep and not os.listdir(root):
                os.rmdir(root)
    path = os.path.dirname(path) if not os.path.isdir(path) else path
    while path.startswith(keep + os.sep) and os.path.isdir(path) and not os.listdir(path):
        os.rmdir(path)
        path = os.path.dirname(path)


def run(config, *, progress=None, overwrite=False, verbose=False):
    """Runs the pipeline a `Config` describes and returns a `RunResult`.

    A run directory left by an interrupted run of the same config is resumed;
    one left by a finished run is returned as it is (see the module
    docstring).

    Args:
        config: an `edgekeras.app.config.Config`.
        progress: show progress bars (default: `config.evaluate.progress`).
        overwrite: delete whatever the run directory holds and start over.
        verbose: print every log entry on the training epoch lines (the
            per-layer `sparsity/<layer>` too); by default they go to
            TensorBoard and History only.

    Returns:
        A `RunResult`; the run directory holds everything listed in the
        module docstring.

    Raises:
        RunDirectoryError: the run directory holds a run of another config
            (and `overwrite` is False).

    Example:

    ```python
    result = run(load_config("configs/demo.toml"))
    print(result.table)
    ```
    """
    context = _start(config, progress, overwrite, verbose)
    finished = _finished_run(context)
    if finished is not None:
        return finished
    existing = _existing_ancestor(config.run_dir)
    _prepare_run_dir(context)
    by_name(config.model.keras, "model.keras").keras.utils.set_random_seed(config.run.seed)
    state, timings = context.state, context.timings
    for name, stage in STAGES:
        if name in CHIEF_ONLY and not context.chief:
            _remove_empty_dirs(config.run_dir, keep=existing)
            return RunResult(run_dir=config.run_dir, report=None, table="", timings=timings)
        start = time.perf_counter()
        stage(context)
        # Each stage drops models and buffers of GBs (a QAT fit, a converter):
        # without this the heap keeps their pages and the next stage stacks on top.
        return_freed_heap()
        timings[name] = round(time.perf_counter() - start, 2)
        state.add_time(name, timings[name])
        state.save()
        log(f"{name}: {timings[name]:.1f} s")
    state.drop_cache()
    state.data["finished"] = True
    state.save()
    return RunResult(run_dir=config.run_dir, report=context.report, table=format_table(context.report), timings=timings)
