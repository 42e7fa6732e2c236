"""Measuring a `LatencyTable` with LiteRT on the machine at hand.

Each layer the table holds (`edgekeras.channels.latency.KINDS`) is rebuilt
alone at its input's spatial shape, at a few widths of each of its channel
axes that a slimming can change, converted to a full-integer file with int8
input and output (so the file holds that one op), and timed at batch 1. Layers
of the same configuration at the same input shape (the repeated blocks of a
stage) are measured once. All files are loaded together and invoked in
alternating rounds, so that a shared machine's drifts hit every width alike;
each cost is a median over the rounds minus the median of an almost empty
file. The dense model itself (float input and output, as deployed) is timed
in the same rounds; its latency over the sum of its layers' costs becomes
the table's `scale` (see `edgekeras.channels.latency`).

Example:

```python
table = measure_table(model, groups=groups, num_threads=1)
table.save("mobilenet_v2_96.json")
```
"""

import json
import os
import time

import numpy as np

from edgekeras.channels.latency import CHANNEL_WISE, LatencyTable, LatencyTableError, LayerCost, layer_kind, layer_widths
from edgekeras.compat import check_model, keras
from edgekeras.images import check_positive_int
from edgekeras.io import atomic_write_bytes, atomic_write_json, read_json
from edgekeras.litert import convert
from edgekeras.runtime import TFLiteModel, check_threads

__all__ = ["alternating_medians", "grid_widths", "measure_table", "table_from_bench", "write_layer_files"]

PLAN_FORMAT = "edgekeras-latency-plan"

# Configuration keys that do not change what a layer computes or costs.
_IGNORED_SUFFIXES = ("_initializer", "_regularizer", "_constraint")
_IGNORED_KEYS = ("name", "trainable", "dtype", "filters", "units")


def grid_widths(full, points, round_to):
    """The widths one channel axis is measured at.

    Args:
        full: the axis' width in the dense model.
        points: how many widths, spread evenly from `round_to` to `full`.
        round_to: each width but `full` is a multiple of this.

    Returns:
        Sorted distinct widths ending with `full` (`[full]` alone when
        `full <= round_to`).

    Example:

    ```python
    grid_widths(96, 4, 8)  # [8, 40, 64, 96]
    ```
    """
    if full <= round_to:
        return [full]
    spread = np.linspace(round_to, full, points)
    widths = {int(round(value / round_to)) * round_to for value in spread[:-1]}
    return sorted({min(max(width, round_to), full) for width in widths} | {full})


def _varying_axes(model, groups):
    """`{layer name: (input may change, output may change)}`."""
    if groups is not None:
        ins, outs = set(), set()
        for group in groups:
            if group.prunable:
                outs.update(group.producers)
                ins.update(group.consumers)
                ins.update(group.passthrough)
                outs.update(group.passthrough)
        return {layer.name: (layer.name in ins, layer.name in outs) for layer in model.layers}
    # Without groups: every axis but the image's channels and the model's outputs.
    input_ids = {id(tensor) for tensor in model.inputs}
    output_ids = {id(tensor) for tensor in model.outputs}
    axes = {}
    for layer in model.layers:
        if layer_kind(layer) is not None:
            inputs = layer.input if isinstance(layer.input, list) else [layer.input]
            axes[layer.name] = (not any(id(tensor) in input_ids for tensor in inputs), id(layer.output) not in output_ids)
    return axes


def _signature(layer, axes):
    config = {
        key: value
        for key, value in layer.get_config().items()
        if key not in _IGNORED_KEYS and not key.endswith(_IGNORED_SUFFIXES)
    }
    shape = layer.input_shape[0] if isinstance(layer.input_shape, list) else layer.input_shape
    return json.dumps([type(layer).__name__, list(shape[1:]), layer.output_shape[-1], axes, config], sort_keys=True, default=str)


def _one_layer_model(layer, kind, channels_in, channels_out):
    """`layer` alone at its input's spatial shape, with `channels_in` inputs and `channels_out` outputs."""
    shape = layer.input_shape[0] if isinstance(layer.input_shape, list) else layer.input_shape
    inputs = keras.Input((*shape[1:-1], channels_in))
    config = {key: value for key, value in layer.get_config().items() if key != "name"}
    if kind == "conv2d":
        config.update(filters=channels_out, use_bias=True, activation="linear")
    elif kind == "dense":
        config.update(units=channels_out, use_bias=True, activation="linear")
    elif kind == "depthwise_conv2d":
        config.update(use_bias=True, activation="linear")
    clone = type(layer).from_config(config)
    outputs = clone([inputs, inputs]) if kind == "add" else clone(inputs)
    return keras.Model(inputs, outputs)


def _plan(width, kind, axes, points, round_to):
    """`[(channels in, channels out, role)]` to measure; role is "in", "out" or "corner"."""
    full_in, full_out = width
    grid_in = grid_widths(full_in, points, round_to) if axes[0] or (kind in CHANNEL_WISE and axes[1]) else [full_in]
    if kind in CHANNEL_WISE:
        return [(channels, channels * full_out // full_in, "in") for channels in grid_in]
    grid_out = grid_widths(full_out, points, round_to) if axes[1] else [full_out]
    plan = [(channels, full_out, "in") for channels in grid_in]
    plan += [(full_in, channels, "out") for channels in grid_out if channels != full_out]
    if len(grid_in) > 1 and len(grid_out) > 1:
        plan.append((grid_in[(len(grid_in) - 1) // 2], grid_out[(len(grid_out) - 1) // 2], "corner"))
    return plan


def _int8_file(model, examples, rng):
    data = rng.uniform(-1.0, 1.0, (examples, *model.input_shape[1:])).astype(np.float32)
    return convert(model, "int8", representative_data=data, representative_examples=examples, io_dtype="int8")


def alternating_medians(files, num_threads=1, rounds=25, warmup=2, burst=3):
    """Median milliseconds of each file's batch-1 invocation, the files visited in rotating order each round.

    A visit invokes the file once untimed, then `burst` times back to back,
    each timed alone, so a cost is a warm one, as `edgekeras bench`
    (back-to-back invocations of one file) measures it: invoked once after a
    hundred other files, even an empty file takes ten times its warm latency
    (caches and the interpreter's own state gone cold), which would drown the
    small layers' costs. Visiting the files in turn spreads a shared
    machine's drifts over all of them alike, so their ratios hold.

    Args:
        files: .tflite paths or flatbuffers.
        num_threads: LiteRT threads.
        rounds: visits per file; the median is over all their timed invocations.
        warmup: untimed invocations of each file before the first round.
        burst: timed invocations per visit.

    Returns:
        A numpy array of medians in milliseconds, in `files`' order.

    Example:

    ```python
    dense_ms, slim_ms = alternating_medians([dense_file, slim_file], rounds=100)
    ```
    """
    runners = [TFLiteModel(content, num_threads) for content in files]
    prepared = []
    for runner in runners:
        runner.allocate(1)
        zeros = [np.zeros((1, *shape[1:]), np.float32) for shape in runner.input_shapes]
        prepared.append(runner.quantize_input(zeros if len(zeros) > 1 else zeros[0]))
        for _ in range(warmup):
            runner.invoke_raw(prepared[-1])
    times = np.empty((rounds, burst, len(runners)))
    order = np.arange(len(runners))
    for round_index in range(rounds):
        for index in np.roll(order, round_index):
            runner, example = runners[index], prepared[index]
            runner.invoke_raw(example)
            for repeat in range(burst):
                start = time.perf_counter()
                runner.invoke_raw(example)
                times[round_index, repeat, index] = time.perf_counter() - start
    return np.median(times.reshape(-1, len(runners)), axis=0) * 1000.0


def _floor_model():
    inputs = keras.Input((1, 1, 8))
    return keras.Model(inputs, keras.layers.Add()([inputs, inputs]))


def _check_arguments(model, num_threads, points, round_to, repeats, warmup, examples):
    check_model(model)
    check_threads(num_threads)
    checked = ((points, "points"), (round_to, "round_to"), (repeats[0], "rounds"), (repeats[1], "burst"))
    for value, argument in checked + ((examples, "representative_examples"),):
        check_positive_int(value, argument)
    if points < 2:
        raise ValueError(f"Argument `points` must be at least 2 (the full width and one below it). Received: points={points}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"Argument `warmup` must be a non-negative integer. Received: warmup={warmup!r}")


def _layer_files(model, groups, points, round_to, examples, seed):
    """`(layers, files)`: the int8 files to time and, per layer, `(kind, width, [(in, out, role, file index)])`.

    `files[0]` is the floor (an almost empty file), `files[-1]` the dense model
    with float input and output, as deployed.
    """
    rng = np.random.default_rng(seed)
    widths = layer_widths(model)
    axes = _varying_axes(model, groups)
    by_signature, layers, files = {}, {}, [_int8_file(_floor_model(), examples, rng)]
    for layer in model.layers:
        if layer.name not in widths:
            continue
        kind = layer_kind(layer)
        signature = _signature(layer, axes[layer.name])
        if signature not in by_signature:
            plan = _plan(widths[layer.name], kind, axes[layer.name], points, round_to)
            by_signature[signature] = [(ci, co, role, len(files) + i) for i, (ci, co, role) in enumerate(plan)]
            files += [_int8_file(_one_layer_model(layer, kind, ci, co), examples, rng) for ci, co, _ in plan]
        layers[layer.name] = (kind, widths[layer.name], by_signature[signature])
    data = rng.uniform(-1.0, 1.0, (examples, *model.input_shape[1:])).astype(np.float32)
    files.append(convert(model, "int8", representative_data=data, representative_examples=examples))
    return layers, files


def _assemble(layers, milliseconds, num_threads, calibrate):
    """The table from each file's median latency (`milliseconds[file index]`)."""
    floor = float(milliseconds[0])
    costs = {name: _layer_cost(kind, width, plan, milliseconds, floor) for name, (kind, width, plan) in layers.items()}
    table = LatencyTable(costs, num_threads, "int8", round(floor, 6), 0.0)
    total, dense = table.predict(), float(milliseconds[-1])
    if calibrate:
        # Layers all below the floor (a tiny model): the model's time is all overhead.
        table.overhead_ms = table.floor_ms if total > 0 else round(dense, 6)
        table.scale = round(max(dense - floor, floor) / total, 6) if total > 0 else 1.0
    return table


def measure_table(
    model,
    *,
    groups=None,
    num_threads=1,
    points=4,
    round_to=8,
    rounds=25,
    warmup=2,
    burst=3,
    calibrate=True,
    representative_examples=2,
    seed=0,
):
    """Measures the per-layer latency table of `model` with LiteRT, int8, batch 1.

    Args:
        model: a flat functional tf_keras model.
        groups: its `ChannelGroup`s: only the channel axes of prunable groups
            are measured at several widths (default: every axis but the
            image's channels and the model's outputs).
        num_threads: LiteRT threads (measure at the thread count you deploy with).
        points: widths per axis, from `round_to` to the full width.
        round_to: the grid's widths are multiples of this.
        rounds: alternating timed rounds; each cost is a median over them.
        warmup: untimed invocations of each file first.
        burst: timed invocations per file per round (back to back).
        calibrate: also time the dense model and set the table's
            `overhead_ms` and `scale` so that it predicts the dense model's
            measured latency.
        representative_examples: random calibration examples per conversion.
        seed: seed of the random calibration data.

    Returns:
        A `LatencyTable`.

    Raises:
        ValueError: a bad argument or a nested model.
        TypeError: `model` is not a tf_keras model.

    Example:

    ```python
    table = measure_table(model, groups=groups, num_threads=1, points=4)
    ```
    """
    _check_arguments(model, num_threads, points, round_to, (rounds, burst), warmup, representative_examples)
    layers, files = _layer_files(model, groups, points, round_to, representative_examples, seed)
    if not calibrate:
        files = files[:-1]
    return _assemble(layers, alternating_medians(files, num_threads, rounds, warmup, burst), num_threads, calibrate)


def _file_names(count):
    return ["floor.tflite"] + [f"layer_{index:04d}.tflite" for index in range(1, count - 1)] + ["model.tflite"]


def write_layer_files(model, directory, *, groups=None, points=4, round_to=8, representative_examples=2, seed=0):
    """Writes the files `measure_table` times, for timing them with `edgekeras bench` on a device.

    `directory` gets `floor.tflite`, one `layer_NNNN.tflite` per layer shape
    and width, `model.tflite` (the dense model) and `plan.json`, which says
    which layer and widths each file holds. On the device (ai-edge-litert
    and `pip install edgekeras` without TensorFlow), time every file at the
    deployed thread count and keep the JSON beside it:

    ```sh
    for f in *.tflite; do edgekeras bench "$f" --threads 1 --runs 100 --json "${f%.tflite}.json"; done
    ```

    then copy the directory back and read the table with `table_from_bench`.

    Args:
        model: a flat functional tf_keras model, as for `measure_table`.
        directory: where to write (created if needed).
        groups: its `ChannelGroup`s, as for `measure_table`.
        points: widths per axis, as for `measure_table`.
        round_to: the grid's widths are multiples of this.
        representative_examples: random calibration examples per conversion.
        seed: seed of the random calibration data.

    Returns:
        The paths written, `plan.json` last.

    Example:

    ```python
    write_layer_files(model, "table_files", groups=groups)
    ```
    """
    _check_arguments(model, 1, points, round_to, (1, 1), 0, representative_examples)
    layers, files = _layer_files(model, groups, points, round_to, representative_examples, seed)
    names = _file_names(len(files))
    paths = [atomic_write_bytes(os.path.join(directory, name), content) for name, content in zip(names, files)]
    plan = {
        "format": PLAN_FORMAT,
        "files": names,
        "layers": {
            name: {"kind": kind, "width": list(width), "points": [list(point) for point in points]}
            for name, (kind, width, points) in layers.items()
        },
    }
    return paths + [atomic_write_json(os.path.join(directory, "plan.json"), plan)]


def table_from_bench(directory, num_threads=1):
    """The `LatencyTable` from the `edgekeras bench --json` results of `write_layer_files`' files.

    Args:
        directory: the directory `write_layer_files` wrote, each `NAME.tflite`
            with its `NAME.json` written by `edgekeras bench NAME.tflite --json NAME.json`.
        num_threads: the `--threads` value whose `median_ms` to read.

    Returns:
        A `LatencyTable` (its `scale` from `model.tflite`'s latency).

    Raises:
        LatencyTableError: `plan.json` or a bench result is missing or lacks
            the thread count; the message names the file.

    Example:

    ```python
    table = table_from_bench("table_files", num_threads=1)
    ```
    """
    check_threads(num_threads)
    plan_path = os.path.join(directory, "plan.json")
    plan = read_json(plan_path)
    if not isinstance(plan, dict) or plan.get("format") != PLAN_FORMAT:
        raise LatencyTableError(f"{plan_path!r} is missing or is not a plan written by `write_layer_files`.")
    milliseconds = []
    for name in plan["files"]:
        result_path = os.path.join(directory, name[: -len(".tflite")] + ".json")
        result = read_json(result_path)
        try:
            milliseconds.append(float(result["latency"][str(num_threads)]["median_ms"]))
        except (TypeError, KeyError, ValueError) as error:
            raise LatencyTableError(
                f"Bench result {result_path!r} is missing or has no `latency.{num_threads}.median_ms` ({error!r}). "
                f"Run `edgekeras bench {name} --threads {num_threads} --json {os.path.basename(result_path)}` on the device."
            ) from error
    layers = {
        name: (entry["kind"], tuple(entry["width"]), [tuple(point) for point in entry["points"]])
        for name, entry in plan["layers"].items()
    }
    return _assemble(layers, milliseconds, num_threads, calibrate=True)


def _layer_cost(kind, width, plan, milliseconds, floor):
    full_in, full_out = width
    by_in, by_out, corner = [], [], None
    for channels_in, channels_out, role, index in plan:
        ms = round(max(float(milliseconds[index]) - floor, 0.0), 6)
        if role == "in":
            by_in.append((channels_in, ms))
        elif role == "out":
            by_out.append((channels_out, ms))
        else:
            corner = (channels_in, channels_out, ms)
    full = next(ms for channels, ms in by_in if channels == full_in)
    by_out = sorted(by_out + [(full_out, full)])
    return LayerCost(kind, (full_in, full_out), sorted(by_in), by_out, corner)
