"""Batch-1 latency of every deployed .tflite of a run, with FLOPs and GFLOP/s.

Every .tflite file of a run directory (the variants listed in its
`report.json`, or else every `tflite/*.tflite`) is loaded once per thread
count in the LiteRT interpreter (default XNNPACK delegate, as edgekeras
evaluates them), allocated at batch 1 and warmed up. Then rounds run
`--runs / --rounds` timed invocations of each (file, threads) pair, in an
order rotated each round, so that drifts of a shared machine hit all files
alike. Each invocation is timed alone, as `edgekeras.litert.measure_latency`
does (set the prepared input, `invoke`); the table reports the median and the
90th percentile over all of them, the spread (min-max) of the per-round
medians, and the ratio of medians to the run's float reference at the same
thread count.

FLOPs are counted from the flatbuffer itself: 2 x the multiply-accumulates of
every CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED op at batch 1, from the
shapes of its weight and output tensors (elementwise ops, pooling and
activations are left out: they are a few percent of MobileNetV2's work).
GFLOP/s = those FLOPs / the median latency. "Non-zero" FLOPs count only the
weights that are not zero (what a sparse kernel could skip to).

XNNPACK sparse inference. The `sparse_float32` variants are converted with
`tf.lite.Optimize.EXPERIMENTAL_SPARSITY`: their pruned weights are stored
sparse-encoded behind DENSIFY ops. LiteRT needs no flag for XNNPACK's sparse
path (there is none to set from Python): the XNNPACK delegate unpacks such
weights at load time and then passes XNN_FLAG_HINT_SPARSE_INFERENCE by itself.
The hint is only a hint: XNNPACK switches a graph to its sparse (NCHW) kernels
only if (1) the CPU is ARM, or x86 *without* AVX (on x86 with AVX its sparse
kernels are disabled as slower than dense ones), (2) the graph from a 3x3
stride-2 first convolution with exactly 1 pixel of padding on every side to
the global average pooling uses only ops it supports in NCHW, and (3) at
least 2/3 of the weights of its 1x1 convolutions are zero. The script checks
(1)-(3) for each sparse-encoded file and reports them; it cannot observe
XNNPACK's choice directly (the pip build logs nothing). `--sparse-probe` adds
an empirical check: a small network built the way XNNPACK's sparse path
wants, its 1x1 convolutions 90 % zeros, converted dense and sparse-encoded
and timed side by side; identical outputs and equal latency mean the sparse
kernels were not used.

Run (after `make run CONFIG=configs/default.toml`, which writes runs/default):

    python benchmarks/deployed_latency.py --run-dir runs/default --threads 1 2 --runs 100 --json runs/bench/deployed_latency.json
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this checkout's edgekeras, not whichever one is installed

import numpy as np  # noqa: E402

from edgekeras.litert import TFLiteModel, file_sizes, tflite_sparsity  # noqa: E402
from machine import machine_info, write_json  # noqa: E402  (benchmarks/machine.py)

_WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
_PASS_THROUGH = ("DEQUANTIZE", "DENSIFY")


def cpu_has_avx():
    """True/False from /proc/cpuinfo on x86 Linux, None where it cannot be told."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return None
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return "avx" in line.split(":", 1)[1].split()
    except OSError:
        return None
    return None


def list_variants(run_dir):
    """[(name, role, path)] from report.json, else from tflite/*.tflite."""
    report_path = os.path.join(run_dir, "report.json")
    if os.path.isfile(report_path):
        with open(report_path) as handle:
            report = json.load(handle)
        return [(v["name"], v.get("role", ""), os.path.join(run_dir, v["file"])) for v in report["variants"]], report
    directory = os.path.join(run_dir, "tflite")
    if not os.path.isdir(directory):
        raise SystemExit(f"{run_dir} has neither report.json nor tflite/: pass --run-dir of an `edgekeras run` directory")
    names = sorted(f for f in os.listdir(directory) if f.endswith(".tflite"))
    return [(os.path.splitext(f)[0], "", os.path.join(directory, f)) for f in names], None


# ---------------------------------------------------------------- flatbuffer analysis


def _read_model(path):
    from ai_edge_litert import schema_py_generated as schema

    with open(path, "rb") as handle:
        data = handle.read()
    return schema, schema.Model.GetRootAsModel(data, 0)


def _shape(tensor):
    return [int(d) for d in tensor.ShapeAsNumpy()] if tensor.ShapeLength() else []


def _constant(root, tensor, dtype=None):
    buffer = root.Buffers(tensor.Buffer())
    if buffer is None or buffer.DataLength() == 0:
        return None
    raw = buffer.DataAsNumpy().tobytes()
    return np.frombuffer(raw, dtype=dtype) if dtype is not None else raw


_NUMPY_TYPES = None


def _numpy_type(schema, tensor_type):
    global _NUMPY_TYPES
    if _NUMPY_TYPES is None:
        t = schema.TensorType
        _NUMPY_TYPES = {t.FLOAT32: np.float32, t.FLOAT16: np.float16, t.INT8: np.int8, t.UINT8: np.uint8,
                        t.INT32: np.int32, t.INT16: np.int16}
    return _NUMPY_TYPES.get(tensor_type)


def analyze_tflite(path):
    """FLOPs and the XNNPACK sparse-path conditions that can be read from the file.

    Returns a dict: macs and nonzero_macs at batch 1 (CONV_2D,
    DEPTHWISE_CONV_2D, FULLY_CONNECTED), flops = 2 x macs, sparse_tensors (weights
    stored sparse-encoded, i.e. behind DENSIFY), zeros / total weights of the 1x1
    convolutions, and whether the first convolution is the 3x3 stride-2 one with
    1 pixel of explicit padding on every side that XNNPACK's NCHW path starts from.
    """
    schema, root = _read_model(path)
    op_names = {value: name for name, value in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    codes = []
    for index in range(root.OperatorCodesLength()):
        code = root.OperatorCodes(index)
        codes.append(op_names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM"))
    subgraph = root.Subgraphs(0)
    producers = {}
    for o in range(subgraph.OperatorsLength()):
        operator = subgraph.Operators(o)
        for output in operator.OutputsAsNumpy() if operator.OutputsLength() else []:
            producers[int(output)] = operator

    def stored_weights(index):
        """Follows DEQUANTIZE / DENSIFY back to the stored constant: (tensor, values or None, sparse?)."""
        sparse = False
        for _ in range(4):
            producer = producers.get(index)
            if producer is None or codes[producer.OpcodeIndex()] not in _PASS_THROUGH:
                break
            sparse = sparse or codes[producer.OpcodeIndex()] == "DENSIFY"
            index = int(producer.Inputs(0))
        tensor = subgraph.Tensors(index)
        sparse = sparse or tensor.Sparsity() is not None
        dtype = _numpy_type(schema, tensor.Type())
        values = _constant(root, tensor, dtype) if dtype is not None else None
        return tensor, values, sparse

    macs = nonzero_macs = 0.0
    sparse_tensors = 0
    pointwise_zeros = pointwise_total = 0
    first_conv = None
    per_op = []
    for o in range(subgraph.OperatorsLength()):
        operator = subgraph.Operators(o)
        name = codes[operator.OpcodeIndex()]
        if name not in _WEIGHT_OPS:
            continue
        weight_index = int(operator.Inputs(1))
        weight_shape = _shape(subgraph.Tensors(weight_index))
        output_shape = _shape(subgraph.Tensors(int(operator.Outputs(0))))
        batch = max(1, output_shape[0]) if output_shape else 1
        if name == "CONV_2D":  # weights (out, kh, kw, in / groups)
            out_channels, kh, kw, in_channels = weight_shape
            positions = int(np.prod(output_shape[1:3]))
            op_macs = positions * out_channels * kh * kw * in_channels
        elif name == "DEPTHWISE_CONV_2D":  # weights (1, kh, kw, out)
            _, kh, kw, out_channels = weight_shape
            positions = int(np.prod(output_shape[1:3]))
            op_macs = positions * out_channels * kh * kw
        else:  # FULLY_CONNECTED, weights (out, in)
            out_channels, in_channels = weight_shape
            rows = int(np.prod(output_shape)) // max(1, out_channels) // batch
            op_macs = rows * out_channels * in_channels
        stored, values, sparse = stored_weights(weight_index)
        sparse_tensors += int(sparse)
        total = int(np.prod(weight_shape))
        if values is None:
            nonzero = total
        else:
            zero_point = 0
            quantization = stored.Quantization()
            if quantization is not None and quantization.ZeroPointLength() == 1:
                zero_point = int(quantization.ZeroPoint(0))
            nonzero = int(np.count_nonzero(values != zero_point))  # a sparse encoding stores (mostly) non-zeros
        density = min(1.0, nonzero / total) if total else 1.0
        macs += op_macs
        nonzero_macs += op_macs * density
        if name == "CONV_2D" and weight_shape[1:3] == [1, 1]:
            pointwise_total += total
            pointwise_zeros += total - min(nonzero, total)
        if name == "CONV_2D" and first_conv is None:
            first_conv = (operator, weight_shape)
        per_op.append({"op": name, "macs": op_macs, "density": density})
    return {
        "macs": macs,
        "nonzero_macs": nonzero_macs,
        "flops": 2.0 * macs,
        "nonzero_flops": 2.0 * nonzero_macs,
        "sparse_tensors": sparse_tensors,
        "pointwise_zero_fraction": pointwise_zeros / pointwise_total if pointwise_total else 0.0,
        "nchw_entry": _nchw_entry(schema, root, subgraph, codes, producers, first_conv),
        "weight_ops": len(per_op),
    }


def _nchw_entry(schema, root, subgraph, codes, producers, first_conv):
    """Whether the first CONV_2D is what XNNPACK's NCHW (sparse) path can start from.

    XNNPACK wants a 3x3 stride-2 convolution over 3 channels with exactly 1
    pixel of padding on every side; TF "SAME" padding of a stride-2 conv on an
    even-sized input pads 0 before and 1 after, so it does not qualify.
    """
    if first_conv is None:
        return {"ok": False, "reason": "no CONV_2D"}
    operator, weight_shape = first_conv
    options = schema.Conv2DOptions()
    table = operator.BuiltinOptions()
    options.Init(table.Bytes, table.Pos)
    _, kh, kw, in_channels = weight_shape
    if (kh, kw, in_channels) != (3, 3, 3) or (options.StrideH(), options.StrideW()) != (2, 2):
        return {"ok": False, "reason": f"first conv is {kh}x{kw} over {in_channels} channels, stride "
                                       f"{options.StrideH()}x{options.StrideW()} (XNNPACK wants 3x3 over 3, stride 2)"}
    if options.Padding() == schema.Padding.SAME:
        return {"ok": False, "reason": "first conv uses SAME padding (0 before / 1 after at stride 2; XNNPACK wants 1 on every side)"}
    producer = producers.get(int(operator.Inputs(0)))
    if producer is None or codes[producer.OpcodeIndex()] not in ("PAD", "PADV2"):
        return {"ok": False, "reason": "first conv has VALID padding and no PAD before it"}
    paddings = _constant(root, subgraph.Tensors(int(producer.Inputs(1))), np.int32)
    if paddings is None or paddings.reshape(-1, 2)[1:3].tolist() != [[1, 1], [1, 1]]:
        pads = paddings.reshape(-1, 2).tolist() if paddings is not None else "?"
        return {"ok": False, "reason": f"the PAD before the first conv pads {pads}"}
    return {"ok": True, "reason": "3x3 stride-2 conv after a 1-pixel PAD"}


def sparse_verdict(analysis, avx):
    """Why XNNPACK will or will not run a sparse-encoded file with sparse kernels."""
    if not analysis["sparse_tensors"]:
        return "dense file (no sparse-encoded weights): dense kernels"
    reasons = []
    if avx:
        reasons.append("x86 CPU with AVX: XNNPACK disables its sparse (CHW) kernels here")
    if not analysis["nchw_entry"]["ok"]:
        reasons.append(analysis["nchw_entry"]["reason"])
    if analysis["pointwise_zero_fraction"] <= 2 / 3:
        reasons.append(f"1x1 conv weights {analysis['pointwise_zero_fraction']:.0%} zeros (XNNPACK needs > 67 %)")
    if reasons:
        return "dense kernels: " + "; ".join(reasons)
    return "sparse kernels possible (file-level conditions met; XNNPACK also needs every op between entry and pooling NCHW-capable)"


# ---------------------------------------------------------------- sparse probe


def sparse_probe(threads, runs, image_size=96, sparsity=0.9):
    """Dense vs sparse-encoded latency of a network built the way XNNPACK's sparse path wants."""
    import tensorflow as tf

    from edgekeras import keras

    inputs = keras.Input((image_size, image_size, 3))
    x = keras.layers.ZeroPadding2D(((1, 1), (1, 1)))(inputs)
    x = keras.layers.Conv2D(32, 3, strides=2, padding="valid", activation="relu")(x)
    for index in range(6):
        # Explicit 1-pixel padding: XNNPACK's NCHW path rejects TF "SAME" depthwise padding.
        x = keras.layers.ZeroPadding2D(((1, 1), (1, 1)))(x)
        x = keras.layers.DepthwiseConv2D(3, padding="valid", activation="relu")(x)
        x = keras.layers.Conv2D(64 * (1 + index // 2), 1, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D(keepdims=True)(x)
    outputs = keras.layers.Dense(10)(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if type(layer) is keras.layers.Conv2D and layer.kernel_size == (1, 1):
            kernel, bias = layer.get_weights()
            threshold = np.quantile(np.abs(kernel), sparsity)
            layer.set_weights([np.where(np.abs(kernel) <= threshold, 0.0, kernel), bias])

    def convert(sparse):
        spec = tf.TensorSpec([1, image_size, image_size, 3], tf.float32)
        function = tf.function(lambda t: model(t, training=False)).get_concrete_function(spec)
        converter = tf.lite.TFLiteConverter.from_concrete_functions([function], model)
        if sparse:
            converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
        return converter.convert()

    image = rng.uniform(-1, 1, (1, image_size, image_size, 3)).astype(np.float32)
    files = {"dense": convert(False), "sparse": convert(True)}
    runners, outputs, times = {}, {}, {"dense": [], "sparse": []}
    for name, flatbuffer in files.items():
        runner = TFLiteModel(flatbuffer, num_threads=threads)
        outputs[name] = runner.predict(image)  # allocates batch 1
        for _ in range(10):
            runner.invoke_raw(image)
        runners[name] = runner
    for index in range(runs):
        for name in (("dense", "sparse") if index % 2 == 0 else ("sparse", "dense")):
            start = time.perf_counter()
            runners[name].invoke_raw(image)
            times[name].append((time.perf_counter() - start) * 1000.0)
    dense_ms, sparse_ms = statistics.median(times["dense"]), statistics.median(times["sparse"])
    identical = bool(np.array_equal(outputs["dense"], outputs["sparse"]))
    return {
        "model": f"{image_size}px: padded 3x3/2 conv, 6 x (3x3 depthwise + 1x1 conv), pooling, dense; 1x1 convs {sparsity:.0%} zeros",
        "threads": threads,
        "sizes_bytes": {name: len(data) for name, data in files.items()},
        "dense_median_ms": dense_ms,
        "sparse_median_ms": sparse_ms,
        "sparse_over_dense": sparse_ms / dense_ms,
        "max_abs_output_diff": float(np.max(np.abs(outputs["dense"] - outputs["sparse"]))),
        "outputs_identical": identical,
        "sparse_kernels_used": (not identical) or sparse_ms < 0.8 * dense_ms,
    }


# ---------------------------------------------------------------- main


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default="runs/default", help="an `edgekeras run` directory")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="interpreter thread counts")
    parser.add_argument("--runs", type=int, default=100, help="timed invocations per file and thread count")
    parser.add_argument("--rounds", type=int, default=5, help="rounds the runs are split into (order rotated each round)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed invocations first")
    parser.add_argument("--variants", nargs="*", default=None, help="only these variant names (default: all)")
    parser.add_argument("--reference", default=None, help="variant the ratios are taken to (default: the report's original, else float32)")
    parser.add_argument("--sparse-probe", action=argparse.BooleanOptionalAction, default=True,
                        help="also time a small XNNPACK-friendly 90 %%-sparse network dense vs sparse-encoded")
    parser.add_argument("--json", default="runs/bench/deployed_latency.json", help="where to write the results ('' for nowhere)")
    args = parser.parse_args(argv)
    for name in ("runs", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be a positive integer. Received: {getattr(args, name)}")
    if args.warmup < 0 or any(t < 1 for t in args.threads):
        parser.error("--warmup must be >= 0 and every --threads value >= 1")
    if args.runs < args.rounds:
        parser.error(f"--runs ({args.runs}) must be at least --rounds ({args.rounds})")

    variants, report = list_variants(args.run_dir)
    if args.variants:
        unknown = sorted(set(args.variants) - {name for name, _, _ in variants})
        if unknown:
            parser.error(f"--variants names variants the run does not have: {unknown}")
        variants = [v for v in variants if v[0] in args.variants]
    names = [name for name, _, _ in variants]
    roles = {name: role for name, role, _ in variants}
    paths = {name: path for name, _, path in variants}
    reference = args.reference or next((n for n in names if roles[n] == "original"), None) or (
        "float32" if "float32" in names else names[0])
    if reference not in names:
        parser.error(f"--reference {reference!r} is not among the variants {names}")

    avx = cpu_has_avx()
    analysis = {}
    for name in names:
        analysis[name] = analyze_tflite(paths[name])
        analysis[name]["sparsity"] = tflite_sparsity(paths[name])
        analysis[name]["size_bytes"], analysis[name]["gzip_bytes"] = file_sizes(paths[name])
        analysis[name]["xnnpack_sparse"] = sparse_verdict(analysis[name], avx)

    # One interpreter per (file, threads), allocated at batch 1 and warmed up
    # (XNNPACK packs weights on the first invocations).
    keys = [(name, threads) for name in names for threads in args.threads]
    runners = {}
    for name, threads in keys:
        runner = TFLiteModel(paths[name], num_threads=threads)
        runner.predict(np.zeros((1, *runner.input_shape[1:]), np.float32))  # allocates batch 1
        image = np.random.default_rng(0).uniform(-1, 1, (1, *runner.input_shape[1:])).astype(np.float32)
        prepared = runner.quantize_input(image)
        for _ in range(args.warmup):
            runner.invoke_raw(prepared)
        runners[(name, threads)] = (runner, prepared)
    print(f"{len(names)} files x {len(args.threads)} thread counts loaded and warmed up", flush=True)

    per_round = [args.runs // args.rounds + (1 if r < args.runs % args.rounds else 0) for r in range(args.rounds)]
    times = {key: [] for key in keys}
    round_medians = {key: [] for key in keys}
    for round_index in range(args.rounds):
        shift = round_index % len(keys)
        for key in keys[shift:] + keys[:shift]:
            runner, prepared = runners[key]
            measured = np.empty(per_round[round_index])
            for index in range(per_round[round_index]):
                start = time.perf_counter()
                runner.invoke_raw(prepared)
                measured[index] = time.perf_counter() - start
            times[key].extend((measured * 1000.0).tolist())
            round_medians[key].append(float(np.median(measured) * 1000.0))
        print(f"round {round_index + 1}/{args.rounds} done", flush=True)

    results = {}
    for name in names:
        entry = {
            "role": roles[name],
            "file": os.path.relpath(paths[name], args.run_dir),
            **{k: v for k, v in analysis[name].items()},
            "latency": {},
        }
        for threads in args.threads:
            samples = times[(name, threads)]
            median = statistics.median(samples)
            reference_median = statistics.median(times[(reference, threads)])
            entry["latency"][str(threads)] = {
                "median_ms": median,
                "p90_ms": float(np.percentile(samples, 90)),
                "round_median_min_ms": min(round_medians[(name, threads)]),
                "round_median_max_ms": max(round_medians[(name, threads)]),
                "ratio_to_reference": median / reference_median,
                "gflops_per_s": analysis[name]["flops"] / (median / 1000.0) / 1e9,
                "runs": len(samples),
                "times_ms": samples,
            }
        results[name] = entry

    probe = None
    if args.sparse_probe:
        print("sparse probe: converting and timing a small 90 %-sparse network ...", flush=True)
        probe = sparse_probe(args.threads[-1], max(50, args.runs))

    print()
    print(f"Batch-1 latency of {args.run_dir} ({len(names)} files; {args.runs} runs per file and thread count "
          f"in {args.rounds} rounds, after {args.warmup} warm-up runs; ratios to {reference})")
    print()
    print("| variant | threads | median ms | p90 ms | spread of round medians | x " + reference +
          " | MFLOPs | GFLOP/s | non-zero MFLOPs | sparsity | size |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        row = results[name]
        for threads in args.threads:
            lat = row["latency"][str(threads)]
            print(
                f"| {name} | {threads} | {lat['median_ms']:.3f} | {lat['p90_ms']:.3f} | "
                f"{lat['round_median_min_ms']:.3f}–{lat['round_median_max_ms']:.3f} | {lat['ratio_to_reference']:.3f} | "
                f"{row['flops'] / 1e6:.1f} | {lat['gflops_per_s']:.1f} | {row['nonzero_flops'] / 1e6:.1f} | "
                f"{row['sparsity']:.1%} | {row['size_bytes'] / 2**20:.2f} MiB |"
            )
    sparse_names = [n for n in names if results[n]["sparse_tensors"]]
    print()
    print("XNNPACK sparse inference (LiteRT sets XNNPACK's sparse hint by itself for sparse-encoded weights; no flag exists):")
    print()
    print("| variant | sparse-encoded weight tensors | 1x1 conv zeros | NCHW entry | verdict |")
    print("|---|---|---|---|---|")
    for name in sparse_names or names[:0]:
        row = results[name]
        print(f"| {name} | {row['sparse_tensors']} | {row['pointwise_zero_fraction']:.1%} | "
              f"{'yes' if row['nchw_entry']['ok'] else 'no'} | {row['xnnpack_sparse']} |")
    if not sparse_names:
        print("| (no sparse-encoded file in this run) | | | | |")
    print(f"\nCPU: {platform.machine()}, AVX {'yes' if avx else 'no' if avx is False else 'unknown'} "
          "(XNNPACK uses sparse kernels on ARM and on x86 without AVX only)")
    if probe is not None:
        print(
            f"Sparse probe ({probe['model']}; {probe['threads']} threads): dense {probe['dense_median_ms']:.3f} ms, "
            f"sparse-encoded {probe['sparse_median_ms']:.3f} ms ({probe['sparse_over_dense']:.2f}x), outputs "
            f"{'bit-identical' if probe['outputs_identical'] else 'differ by %.2g' % probe['max_abs_output_diff']}: "
            f"sparse kernels {'USED' if probe['sparse_kernels_used'] else 'not used'} on this machine"
        )

    report_out = {
        "benchmark": "deployed_latency",
        "settings": vars(args),
        "run_dir": os.path.abspath(args.run_dir),
        "reference": reference,
        "image_size": (report or {}).get("image_size"),
        "machine": {**machine_info(), "avx": avx},
        "results": results,
        "sparse_probe": probe,
    }
    return write_json(args.json, report_out)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
