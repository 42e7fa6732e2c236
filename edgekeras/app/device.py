"""The device-side commands: `edgekeras bench`, `edgekeras evaluate`, `edgekeras c-array`.

They use `edgekeras.runtime` only, so they run where TensorFlow is not
installed (a Raspberry Pi, a phone's Python, a CI box): the light install is
`pip install edgekeras` plus nothing else (docs/guides/device.md).
The CLI imports this module instead of `edgekeras.app.commands` for them.
"""

import json
import os

from edgekeras.errors import EdgekerasError
from edgekeras.io import atomic_write_text
from edgekeras.runtime import benchmark, evaluate_folder, write_c_header

__all__ = ["bench", "evaluate", "c_array"]


def _write_json(path, result):
    if path:
        atomic_write_text(path, json.dumps(result, indent=2) + "\n")


def _fail_as_user_error(call):
    """Runs `call`; bad files and arguments become `EdgekerasError`s the CLI prints as one line."""
    try:
        return call()
    except EdgekerasError:
        raise
    except (FileNotFoundError, ValueError) as error:
        raise DeviceCommandError(str(error)) from error


class DeviceCommandError(EdgekerasError, ValueError):
    """A device command got a missing file or a bad value."""


def bench(args):
    """`edgekeras bench MODEL`: latency percentiles per thread count and memory."""
    result = _fail_as_user_error(
        lambda: benchmark(args.model, threads=args.threads, runs=args.runs, warmup=args.warmup)
    )
    print(f"{result.path}: {result.size_bytes / 1024:.1f} KiB, input {result.input_shapes} {result.input_dtypes}")
    print("| threads | median ms | p90 ms | p99 ms | mean ms | min ms | max ms |")
    print("|---|---|---|---|---|---|---|")
    for count, latency in result.latency.items():
        print(
            f"| {count} | {latency.median_ms:.3f} | {latency.p90_ms:.3f} | {latency.p99_ms:.3f} | "
            f"{latency.mean_ms:.3f} | {latency.min_ms:.3f} | {latency.max_ms:.3f} |"
        )
    memory = result.memory
    print(
        f"memory (resident set): {memory['before_load']:.1f} MiB before loading, {memory['after_run']:.1f} MiB after "
        f"running, peak {memory['peak_rss_mib']:.1f} MiB"
    )
    _write_json(args.json, result.to_dict())
    return 0


def evaluate(args):
    """`edgekeras evaluate MODEL --images DIR`: top-1 accuracy on a folder of labelled images."""
    class_names = None
    if args.class_names:
        class_names = [name.strip() for name in args.class_names.split(",") if name.strip()]
    result = _fail_as_user_error(
        lambda: evaluate_folder(
            args.model,
            args.images,
            normalization=args.normalization,
            class_names=class_names,
            batch_size=args.batch_size,
            num_threads=args.threads,
        )
    )
    print(f"{os.path.basename(result.path)} on {result.images}: top-1 accuracy {result.accuracy:.4f} "
          f"({result.correct}/{result.examples}) in {result.seconds:.1f} s")
    for name, accuracy in result.per_class.items():
        print(f"  {name}: {accuracy:.4f}")
    _write_json(args.json, result.to_dict())
    return 0


def c_array(args):
    """`edgekeras c-array MODEL --output model_data.h`: the file as a C header for TFLite Micro."""
    output = args.output or os.path.splitext(os.path.basename(args.model))[0] + "_data.h"
    name = _fail_as_user_error(lambda: write_c_header(args.model, output, args.name))
    print(f"wrote {output}: const unsigned char {name}[] ({os.path.getsize(args.model)} bytes), {name}_len")
    return 0
