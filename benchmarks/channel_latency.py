"""A per-layer latency table of MobileNetV2, and how well it predicts slimmed models' latency.

Builds a MobileNetV2 (keras.applications' layers and names, a 10-class head)
at `--image-size`, with random weights or ImageNet ones (`--weights`),
measures its `LatencyTable` with `edgekeras.channels.measure.measure_table`
(int8, batch 1, `--threads`) and times that. Then it builds slimmed copies
directly, as `../shared/notes/slim_probe.py` does: the probe's uniform
variants (each block's expand channels x 0.75, 0.5, 0.35, the 1280-channel
head halved), the uniform slimming of every group at `--target` of the
dense predicted latency (`uniform_at_latency`) and the latency allocation at
the same target (`allocate`; importance: BatchNorm scale x the project
kernel's L1 norm per channel with `--weights`, equal for every channel with
random weights, so the allocation follows latency alone). Each is converted
to a full-integer file (float input and output, as deployed) and the files
are timed in one process in alternating rounds, two ways, each twice: warm
(each visit one untimed and three timed invocations, `alternating_medians`,
as the table's files are timed and as `edgekeras bench` runs one file back
to back) and cold (one invocation per visit right after the other files', as
the probe). Reported per variant: the table's predicted and the measured
median latency, both as ratios to the dense model, and the error of the
predicted ratio.

Run:

    python benchmarks/channel_latency.py --image-size 96 --threads 1 --json runs/bench/channel_latency.json
    python benchmarks/channel_latency.py --weights ../shared/data/weights/mobilenet_v2_1.0_224_no_top_imagenet_tfslim.h5
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this checkout's edgekeras, not whichever one is installed

import numpy as np  # noqa: E402

from edgekeras.channels import ChannelGroup  # noqa: E402
from edgekeras.channels.allocation import allocate, uniform_at_latency  # noqa: E402
from edgekeras.channels.measure import alternating_medians, measure_table  # noqa: E402
from edgekeras.compat import keras  # noqa: E402
from edgekeras.litert import TFLiteModel, convert  # noqa: E402

# (expansion, output channels, repeats, first stride) of MobileNetV2's stages after block 0.
STAGES = [(6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def _block(x, index, channels_in, expand, channels_out, stride):
    prefix = f"block_{index}_"
    h = keras.layers.Conv2D(expand, 1, padding="same", use_bias=False, name=prefix + "expand")(x)
    h = keras.layers.BatchNormalization(epsilon=1e-3, momentum=0.999, name=prefix + "expand_BN")(h)
    h = keras.layers.ReLU(6.0, name=prefix + "expand_relu")(h)
    if stride == 2:
        size = h.shape[1]
        h = keras.layers.ZeroPadding2D(((1 - size % 2, 1), (1 - size % 2, 1)), name=prefix + "pad")(h)
    h = keras.layers.DepthwiseConv2D(3, stride, padding="same" if stride == 1 else "valid", use_bias=False, name=prefix + "depthwise")(h)
    h = keras.layers.BatchNormalization(epsilon=1e-3, momentum=0.999, name=prefix + "depthwise_BN")(h)
    h = keras.layers.ReLU(6.0, name=prefix + "depthwise_relu")(h)
    h = keras.layers.Conv2D(channels_out, 1, padding="same", use_bias=False, name=prefix + "project")(h)
    h = keras.layers.BatchNormalization(epsilon=1e-3, momentum=0.999, name=prefix + "project_BN")(h)
    if stride == 1 and channels_in == channels_out:
        h = keras.layers.Add(name=prefix + "add")([x, h])
    return h


def blocks():
    """`[(index, channels in, expand channels, channels out, stride)]` of blocks 1-16."""
    result, channels_in, index = [], 16, 1
    for expansion, channels_out, repeats, stride in STAGES:
        for repeat in range(repeats):
            result.append((index, channels_in, channels_in * expansion, channels_out, stride if repeat == 0 else 1))
            channels_in, index = channels_out, index + 1
    return result


def mobilenet_v2(size, widths=None, classes=10):
    """MobileNetV2 with keras.applications' layer names; `widths` overrides groups' channel counts."""
    widths = widths or {}
    inputs = keras.Input((size, size, 3))
    stem = widths.get("Conv1", 32)
    x = keras.layers.Conv2D(stem, 3, 2, padding="same", use_bias=False, name="Conv1")(inputs)
    x = keras.layers.ReLU(6.0, name="Conv1_relu")(keras.layers.BatchNormalization(epsilon=1e-3, momentum=0.999, name="bn_Conv1")(x))
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="expanded_conv_depthwise")(x)
    x = keras.layers.BatchNormalization(epsilon=1e-3, momentum=0.999, name="expanded_conv_depthwise_BN")(x)
    x = keras.layers.ReLU(6.0, name="expanded_conv_depthwise_relu")(x)
    x = keras.layers.Conv2D(16, 1, use_bias=False, name="expanded_conv_project")(x)
    x = keras.layers.BatchNormalization(epsilon=1e-3, momentum=0.999, name="expanded_conv_project_BN")(x)
    for index, channels_in, expand, channels_out, stride in blocks():
        x = _block(x, index, channels_in, widths.get(f"block_{index}_expand", expand), channels_out, stride)
    x = keras.layers.Conv2D(widths.get("Conv_1", 1280), 1, use_bias=False, name="Conv_1")(x)
    x = keras.layers.ReLU(6.0, name="out_relu")(keras.layers.BatchNormalization(epsilon=1e-3, momentum=0.999, name="Conv_1_bn")(x))
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    return keras.Model(inputs, keras.layers.Dense(classes, activation="softmax", name="logits")(x))


def channel_groups():
    """The free groups: the stem's channels, each block's expand channels, the head's 1280."""
    groups = [
        ChannelGroup(
            "Conv1", 32, ("Conv1",),
            ("bn_Conv1", "Conv1_relu", "expanded_conv_depthwise", "expanded_conv_depthwise_BN", "expanded_conv_depthwise_relu"),
            ("expanded_conv_project",),
        )
    ]
    for index, _, expand, _, stride in blocks():
        prefix = f"block_{index}_"
        passthrough = [prefix + "expand_BN", prefix + "expand_relu"] + ([prefix + "pad"] if stride == 2 else [])
        passthrough += [prefix + "depthwise", prefix + "depthwise_BN", prefix + "depthwise_relu"]
        groups.append(ChannelGroup(prefix + "expand", expand, (prefix + "expand",), tuple(passthrough), (prefix + "project",)))
    groups.append(ChannelGroup("Conv_1", 1280, ("Conv_1",), ("Conv_1_bn", "out_relu", "head_pool"), ("logits",)))
    return groups


def importance(model, groups, weighted):
    """Per-channel scores: BatchNorm scale x consumer kernel L1 norm (mean 1 per group); ones for random weights."""
    scores = {}
    for group in groups:
        if not weighted:
            scores[group.name] = np.ones(group.size)
            continue
        gamma, _, _, variance = model.get_layer(group.passthrough[0]).get_weights()
        kernel = model.get_layer(group.consumers[0]).get_weights()[0]
        rows = np.moveaxis(np.abs(kernel), -2, 0).reshape(kernel.shape[-2], -1).sum(axis=1)
        values = np.abs(gamma) / np.sqrt(variance + 1e-3) * rows
        scores[group.name] = values / values.mean()
    return scores


def probe_variants():
    """The probe's uniform slimmings: {name: widths}."""
    variants = {}
    for keep, head in ((0.75, 1280), (0.5, 1280), (0.5, 640), (0.35, 640)):
        widths = {f"block_{i}_expand": max(8, int(round(expand * keep / 8)) * 8) for i, _, expand, _, _ in blocks()}
        widths["Conv_1"] = head
        variants[f"expand{keep}" + ("" if head == 1280 else f"_head{head}")] = widths
    return variants


def _int8(model, size):
    data = np.random.default_rng(0).uniform(-1, 1, (8, size, size, 3)).astype("float32")
    return convert(model, "int8", representative_data=data, representative_examples=8)


def cold_medians(files, threads, rounds):
    """Median ms of single invocations, each right after the other files' (the probe's timing)."""
    runners = [TFLiteModel(content, threads) for content in files]
    prepared = []
    for runner in runners:
        runner.allocate(1)
        prepared.append(runner.quantize_input(np.zeros((1, *runner.input_shape[1:]), np.float32)))
        for _ in range(10):
            runner.invoke_raw(prepared[-1])
    times = np.empty((rounds, len(runners)))
    for round_index in range(rounds):
        for index in np.roll(np.arange(len(runners)), round_index):
            start = time.perf_counter()
            runners[index].invoke_raw(prepared[index])
            times[round_index, index] = time.perf_counter() - start
    return np.median(times, axis=0) * 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--weights", default=None, help="ImageNet no-top .h5 weights (default: random)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--points", type=int, default=4, help="table widths per channel axis")
    parser.add_argument("--round-to", type=int, default=16, help="channel multiple of the table grid and the slimmings")
    parser.add_argument("--target", type=float, default=0.6, help="latency target for uniform_at_latency and allocate")
    parser.add_argument("--rounds", type=int, default=100, help="alternating rounds of the whole models (3 timed runs each)")
    parser.add_argument("--table", default=None, help="also save the table to this JSON file")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    dense = mobilenet_v2(args.image_size)
    if args.weights:
        dense.load_weights(args.weights, by_name=True, skip_mismatch=True)
    groups = channel_groups()
    start = time.perf_counter()
    table = measure_table(dense, groups=groups, num_threads=args.threads, points=args.points, round_to=args.round_to)
    table_s = time.perf_counter() - start
    print(f"table: {len(table.layers)} layers in {table_s:.1f} s; floor {table.floor_ms:.4f} ms, scale {table.scale:.3f}")
    if args.table:
        table.save(args.table)

    variants = {"dense": {}, **probe_variants()}
    variants[f"uniform_at_{args.target}"] = uniform_at_latency(groups, table, args.target, round_to=args.round_to)
    scores = importance(dense, groups, bool(args.weights))
    variants[f"allocated_at_{args.target}"] = allocate(groups, scores, table, args.target, round_to=args.round_to)
    files = {name: _int8(mobilenet_v2(args.image_size, widths), args.image_size) for name, widths in variants.items()}
    # Warm (as `edgekeras bench` and the table time files) and cold (as the probe), alternated twice.
    contents, warm, cold = list(files.values()), [], []
    for _ in range(2):
        warm.append(alternating_medians(contents, args.threads, rounds=args.rounds // 2, warmup=10, burst=3))
        cold.append(cold_medians(contents, args.threads, args.rounds))
    measured = {"warm": dict(zip(files, np.mean(warm, axis=0))), "cold": dict(zip(files, np.mean(cold, axis=0)))}
    predicted_dense = table.predict()
    rows = []
    print("| variant | predicted ms | predicted × dense | warm ms | warm × dense | error | cold ms | cold × dense | error |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, widths in variants.items():
        predicted = table.predict(None, widths, groups=groups)
        row = {"variant": name, "predicted_ms": predicted, "predicted_ratio": predicted / predicted_dense, "widths": widths}
        line = f"| {name} | {predicted:.3f} | {row['predicted_ratio']:.3f} "
        for mode in ("warm", "cold"):
            ratio = measured[mode][name] / measured[mode]["dense"]
            error = row["predicted_ratio"] / ratio - 1
            row.update({f"{mode}_ms": measured[mode][name], f"{mode}_ratio": ratio, f"{mode}_ratio_error": error})
            line += f"| {measured[mode][name]:.3f} | {ratio:.3f} | {row[f'{mode}_ratio_error']:+.1%} "
        rows.append(row)
        print(line + "|")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "table_seconds": table_s, "table": table.to_dict(), "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
