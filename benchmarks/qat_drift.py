"""Where a QAT model and its int8 file part: layer by layer, in units of the file's rounding step.

A quantization-aware Keras model computes in float and rounds at every
fake-quant point; its int8 file computes in integers and rounds at the same
points, with the same ranges. The two differ where a value lies near a
rounding boundary and float arithmetic (summation order, BatchNorm applied
after the convolution instead of folded into it) lands it on the other side:
one step (LSB) apart. Such differences feed the next layer, so they grow
with depth, and at the output they flip the top-1 class of a few per cent of
the images (issue #13's agreement goal is 99 %).

This script makes the QAT copy of a finished run's float model (its
`qat.skip_layers` in float), calibrates its activation ranges on 16
validation batches of 32 images, converts it to int8 and runs both on the
next `--examples` validation images, reading every int8 activation of the
file (LiteRT's `experimental_preserve_all_tensors`). For each one it finds the
Keras layer whose output matches it best and reports the mean relative
difference and the fractions of values 1 and 2 or more steps apart.

With `--per-op` it takes the run's trained QAT model (`models/qat.h5`, or
`pqat.h5` with `--model pqat`) and the int8 file the run shipped, and runs
each convolution, fully connected and ADD op's Keras layers on the op's own
input read from the file: what one op adds, without the drift of the ops
before it. It does that twice, the second time with every Keras bias set to
the int32 bias the file stores (TFMOT does not quantize biases), and both
times compares the whole model end to end: top-1 agreement on
`--agreement-examples` validation images.

Run (after `make demo`):

    TFDS_DATA_DIR=../shared/data/tfds python benchmarks/qat_drift.py --run-dir runs/demo \\
        --json runs/qat_drift.json
    TFDS_DATA_DIR=../shared/data/tfds python benchmarks/qat_drift.py --run-dir runs/demo --per-op \\
        --json runs/qat_drift_per_op.json
    python benchmarks/qat_drift.py --summarize runs/qat_drift_per_op*.json --json runs/summary.json
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402

from edgekeras import keras  # noqa: E402
from edgekeras.litert import convert  # noqa: E402
from edgekeras.models import load_model  # noqa: E402
from edgekeras.quantization import calibrate_activation_ranges, quantize_model  # noqa: E402
from edgekeras.runtime import TFLiteModel  # noqa: E402
from depthwise_ranges import load_run  # noqa: E402  (benchmarks/depthwise_ranges.py)
from machine import machine_info, write_json  # noqa: E402  (benchmarks/machine.py)


def keras_outputs(quantized, images):
    """`{layer name: output}` of every layer of the QAT model on `images`."""
    layers = [layer for layer in quantized.layers[1:] if layer._inbound_nodes]
    probe = keras.Model(quantized.inputs, [layer.get_output_at(len(layer._inbound_nodes) - 1) for layer in layers])
    return dict(zip([layer.name for layer in layers], probe.predict(images, batch_size=64, verbose=0)))


def dequantized(interpreter, index):
    """`(values, scale)` of tensor `index` (`scale` None for a float tensor)."""
    detail = interpreter._get_tensor_details(index, 0)
    values = interpreter.get_tensor(index)
    if detail["dtype"] != np.int8:
        return values.astype(np.float32), None
    scale, zero_point = detail["quantization"]
    return (values.astype(np.float32) - zero_point) * scale, scale


def traced_interpreter(flatbuffer, images):
    """The file's interpreter after one run on `images`, every tensor kept (LiteRT's `experimental_preserve_all_tensors`)."""
    interpreter = Interpreter(model_content=flatbuffer, experimental_preserve_all_tensors=True)
    input_index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(input_index, images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(input_index, images)
    interpreter.invoke()
    return interpreter


def file_activations(flatbuffer, images):
    """`[(tensor name, dequantized values, scale)]` of every int8 activation of the file, in execution order."""
    interpreter = traced_interpreter(flatbuffer, images)
    found = []
    for detail in sorted(interpreter.get_tensor_details(), key=lambda d: d["index"]):
        shape = detail["shape"]
        if detail["dtype"] != np.int8 or len(shape) < 2 or shape[0] != len(images):
            continue
        values, scale = dequantized(interpreter, detail["index"])
        found.append((detail["name"], values, scale))
    return found


def compare(outputs, activations):
    rows = []
    for name, values, scale in activations:
        candidates = [(layer, out) for layer, out in outputs.items() if out.shape == values.shape]
        if not candidates or not scale:
            continue
        errors = [np.abs(out - values).mean() / (np.abs(out).mean() + 1e-12) for _, out in candidates]
        best = int(np.argmin(errors))
        steps = np.abs(candidates[best][1] - values) / scale
        rows.append({
            "layer": candidates[best][0], "file_tensor": name, "scale": float(scale),
            "relative_difference": float(errors[best]),
            "one_step_or_more": float(np.mean(steps > 0.5)), "two_steps_or_more": float(np.mean(steps > 1.5)),
        })
    return rows


# File ops whose Keras layers the per-op comparison replays.
REPLAYED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD")


def ends_in_softmax(layer):
    """Whether `layer` (QAT-wrapped or not) applies a softmax: TFMOT wraps the activation in its own object."""
    activation = getattr(getattr(layer, "layer", layer), "activation", None)
    return getattr(getattr(activation, "activation", activation), "__name__", None) == "softmax"


def op_layers(interpreter, model):
    """`[(op, [Keras layer names])]`: the layers the converter fused into each replayed op, in model order.

    An op's output tensor is named after every Keras op folded into it
    ("model/quant_x_relu/Relu6;model/quant_x_BN/FusedBatchNormV3;model/quant_x/Conv2D").
    Ops whose last layer ends in a softmax are left out: the file computes the
    softmax as an op of its own, so the fused op's output has no Keras twin.
    """
    order = {layer.name: position for position, layer in enumerate(model.layers)}
    found = []
    for op in interpreter._get_ops_details():
        if op["op_name"] not in REPLAYED_OPS:
            continue
        name = interpreter._get_tensor_details(op["outputs"][0], 0)["name"]
        parts = {part.split("/")[1] for part in name.split(";") if part.count("/") >= 2}
        layers = sorted((part for part in parts if part in order), key=order.get)
        if layers and not ends_in_softmax(model.get_layer(layers[-1])):
            found.append((op, layers))
    return found


def replay(model, interpreter, ops):
    """`{op output tensor: (Keras layers, fraction of values >= 1 step apart)}`, each op fed the file's input."""
    rows = {}
    for op, layers in ops:
        output, scale = dequantized(interpreter, op["outputs"][0])
        if scale is None:
            continue
        inputs = [dequantized(interpreter, index)[0] for index in op["inputs"][: 2 if op["op_name"] == "ADD" else 1]]
        values = inputs if len(inputs) > 1 else inputs[0]
        for name in layers:
            values = model.get_layer(name)(values, training=False)
        values = np.asarray(values).reshape(output.shape)
        rows[op["outputs"][0]] = (layers, float(np.mean(np.abs(values - output) / scale > 0.5)))
    return rows


def use_file_biases(model, interpreter, ops):
    """Sets each convolution's and Dense layer's effective bias to the int32 bias its op stores; returns how many.

    The Keras bias is the layer's (if any), through the BatchNormalization
    folded into the op: `gamma / sqrt(var + eps) * (bias - mean) + beta`; the
    difference to the file's goes into `beta`, or into the bias without one.
    """
    changed = 0
    for op, layers in ops:
        if op["op_name"] == "ADD" or len(op["inputs"]) < 3 or op["inputs"][2] < 0:
            continue
        detail = interpreter._get_tensor_details(op["inputs"][2], 0)
        if detail["dtype"] != np.int32:
            continue
        stored = interpreter.get_tensor(op["inputs"][2]).astype(np.float64) * detail["quantization_parameters"]["scales"]
        inner = [getattr(model.get_layer(name), "layer", model.get_layer(name)) for name in layers]
        kernel_layer = inner[0]
        norms = [layer for layer in inner if isinstance(layer, keras.layers.BatchNormalization)]
        has_bias = getattr(kernel_layer, "use_bias", False)
        bias = kernel_layer.bias.numpy().astype(np.float64) if has_bias else 0.0
        if norms:
            norm = norms[0]
            factor = norm.gamma.numpy() / np.sqrt(norm.moving_variance.numpy() + norm.epsilon)
            effective = factor * (bias - norm.moving_mean.numpy()) + norm.beta.numpy()
            norm.beta.assign((norm.beta.numpy() + stored - effective).astype(np.float32))
        elif has_bias:
            kernel_layer.bias.assign(stored.astype(np.float32))
        else:
            continue
        changed += 1
    return changed


def measure_per_op(model, flatbuffer, images, agreement_images):
    """The per-op replay and the end-to-end agreement, as trained and with the file's biases."""
    file_output = TFLiteModel(flatbuffer).predict(agreement_images, batch_size=64).argmax(1)
    interpreter = traced_interpreter(flatbuffer, images)
    ops = op_layers(interpreter, model)
    result = {"ops": len(ops)}
    for variant in ("as_trained", "file_biases"):
        if variant == "file_biases":
            result["biases_set"] = use_file_biases(model, interpreter, ops)
        result[variant] = {
            "per_op": {str(index): value for index, value in replay(model, interpreter, ops).items()},
            "agreement": float(np.mean(model.predict(agreement_images, batch_size=64, verbose=0).argmax(1) == file_output)),
        }
    return result


def op_label(layers):
    """"block_3_depthwise (+ pad, BN, relu)" for the layers fused into one op."""
    names = [name.removeprefix("quant_") for name in layers]
    main = next((name for name in names if not name.endswith("_pad")), names[0])
    fused = [name[len(os.path.commonprefix([main, name])):].strip("_") or name for name in names if name != main]
    return main + (f" (+ {', '.join(fused)})" if fused else "")


def per_op_table(result, every):
    """The per-op table for benchmarks/README.md (every `every`-th op, the first and the last)."""
    lines = [
        "| file op (the Keras layers fused into it) | values ≥ 1 step apart, file's input | the same, file's biases |",
        "|---|---|---|",
    ]
    keys = list(result["as_trained"]["per_op"])
    shown = [key for position, key in enumerate(keys) if position % every == 0 or position == len(keys) - 1]
    for key in shown:
        layers, trained = result["as_trained"]["per_op"][key]
        _, biased = result["file_biases"]["per_op"][key]
        lines.append(f"| {op_label(layers)} | {trained:.3%} | {biased:.4%} |")
    lines.append(
        f"| top-1 agreement end to end ({result['agreement_examples']} images) | "
        f"{result['as_trained']['agreement']:.2%} | {result['file_biases']['agreement']:.2%} |"
    )
    return "\n".join(lines) + "\n"


def summary_table(results):
    """One row per `--per-op` result: mean per-op mismatch and end-to-end agreement, as trained and with the file's biases."""
    lines = [
        "| run | trained model | mean per op, as trained → file's biases | "
        "top-1 agreement, as trained → file's biases | images |",
        "|---|---|---|---|---|",
    ]
    for result in results:
        means = [np.mean([value for _, value in result[variant]["per_op"].values()]) for variant in ("as_trained", "file_biases")]
        lines.append(
            f"| {result['run_dir'].split()[0]} | {result['model']} | {means[0]:.3%} → {means[1]:.4%} | "
            f"{result['as_trained']['agreement']:.2%} → {result['file_biases']['agreement']:.2%} | {result['agreement_examples']} |"
        )
    return "\n".join(lines) + "\n"


def main_summary(parser, args):
    """`--summarize`: one table from several `--per-op` JSON files."""
    results = []
    for path in args.summarize:
        with open(path) as handle:
            result = json.load(handle)
        if "file_biases" not in result:
            parser.error(f"Argument `--summarize` takes `--per-op` JSON files. Received: {path!r}, which has no `file_biases`.")
        results.append(result)
    summary = {"machine": machine_info(), "sources": list(args.summarize), "table": summary_table(results)}
    print("\n" + summary["table"])
    write_json(args.json, summary)
    return 0


def main_per_op(parser, args):
    """`--per-op`: the run's trained QAT model against the int8 file it shipped."""
    paths = [os.path.join(args.run_dir, "models", f"{args.model}.h5"), os.path.join(args.run_dir, "tflite", f"{args.model}_int8.tflite")]
    missing = [path for path in paths if not os.path.exists(path)]
    if missing:
        parser.error(f"Argument `--run-dir` lacks {missing}. Received: --run-dir={args.run_dir!r}, --model={args.model!r}; "
                     "name a finished run whose config has QAT on.")
    _, _, _, images, _ = load_run(parser, args.run_dir, 0, args.examples + args.agreement_examples)
    with open(paths[1], "rb") as handle:
        flatbuffer = handle.read()
    result = measure_per_op(load_model(paths[0]), flatbuffer, images[: args.examples], images[args.examples:])
    result.update({"machine": machine_info(), "run_dir": args.run_dir, "model": args.model,
                   "examples": args.examples, "agreement_examples": int(len(images) - args.examples)})
    result["table"] = per_op_table(result, args.every)
    print("\n" + result["table"])
    write_json(args.json, result)
    return 0


def markdown_table(result):
    """The table for benchmarks/README.md: every file activation with a 4-D output, and the model's output."""
    lines = [
        "| Keras layer (QAT model) | mean relative difference | values ≥ 1 step apart | values ≥ 2 steps apart |",
        "|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['layer']} | {row['relative_difference']:.2%} | {row['one_step_or_more']:.1%} | "
            f"{row['two_steps_or_more']:.1%} |"
        )
    lines.append(f"| top-1 agreement of the outputs | {result['agreement']:.2%} | | |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default="runs/demo", help="a finished run (config.toml, models/float.h5)")
    parser.add_argument("--examples", type=int, default=256, help="validation images compared (after calibration)")
    parser.add_argument("--every", type=int, default=3, help="publish every n-th activation in the table (JSON: all)")
    parser.add_argument("--per-op", action="store_true", help="replay each op of the trained QAT model on the file's inputs")
    parser.add_argument("--model", choices=("qat", "pqat"), default="qat", help="with --per-op: which trained model")
    parser.add_argument("--agreement-examples", type=int, default=2048, help="with --per-op: images for the agreement")
    parser.add_argument("--summarize", nargs="+", metavar="JSON", help="one table from several --per-op JSON files")
    parser.add_argument("--seed", type=int, default=0, help="random seed: calibration runs in training mode, dropout included")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    if args.summarize:
        return main_summary(parser, args)
    if args.per_op:
        return main_per_op(parser, args)
    config, model, calibration, images, _ = load_run(parser, args.run_dir, 16, args.examples)
    quantized, _ = quantize_model(model, quantize_skip=config.qat.skip_layers)
    calibrate_activation_ranges(quantized, calibration, steps=16)
    outputs = keras_outputs(quantized, images)
    activations = file_activations(convert(quantized, "int8"), images)
    rows = compare(outputs, activations)
    final = outputs[quantized.layers[-1].name]
    file_output = activations[-1][1] if activations and activations[-1][1].shape == final.shape else None
    agreement = float(np.mean(final.argmax(1) == file_output.argmax(1))) if file_output is not None else float("nan")
    result = {
        "machine": machine_info(), "run_dir": args.run_dir, "examples": int(len(images)),
        "agreement": agreement, "rows": rows,
    }
    shown = rows[:: args.every] + ([rows[-1]] if rows and (len(rows) - 1) % args.every else [])
    result["table"] = markdown_table({**result, "rows": shown})
    print("\n" + result["table"])
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
