"""The comparison report: report.json, report.md, a Pareto plot and TensorBoard.

One report compares every exported variant of a run on one dataset split.
Each variant has a *role*: the seed's four columns are `original` (the float
model), `quantized`, `pruned` and `pruned_quantized`, each held by at most one
variant; every other variant is `other`.

`report.json` schema (the fields below are always present; more may be):

```
{
  "dataset": "cifar10", "split": "test", "examples": 10000,
  "variants": [
    {"name": "float32", "role": "original", "file": "float32.tflite",
     "accuracy": 0.912, "size_bytes": 9012345, "gzip_bytes": 8345678,
     "sparsity": 0.0, "latency_ms": 12.3, ...},
    ...
  ],
  "role_choices": {
    "quantized": {"chosen": "qat_int8", "split": "validation", "examples": 5000,
                  "accuracy": {"int8": 0.901, "qat_int8": 0.903}}
  }
}
```

`role_choices` (optional) records how each "auto" role was given (see
`edgekeras.app.roles`): on the validation split, never on the report's test
split; a single candidate's choice has an empty `accuracy`. report.md says
each one in a line below the table.

`latency_ms` is the median batch-1 latency with one thread; `latency` holds
median and p90 for every thread count measured, each file timed on its own;
`alternating_ms` (optional) the one-thread median with all files timed in
turn in one process, from which report.md gives each file's speed-up over the
dense int8 file. `report.md` holds one table;
`pareto.png` plots accuracy against gzip size (the deployable download) and
against latency, each with its Pareto front (`edgekeras.app.plot`).

Example:

```python
report = build_report(variants, dataset="cifar10", split="test", examples=10000)
paths = write_report(report, "runs/demo", tensorboard_dir="runs/demo/logs")
print(format_table(report))
```
"""

import dataclasses
import math
import os

from edgekeras.app.plot import plot_pareto
from edgekeras.app.roles import check_role_choices, choice_line
from edgekeras.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from edgekeras.pareto import pareto_front

__all__ = [
    "ROLES",
    "KEY_ROLES",
    "VariantResult",
    "build_report",
    "validate_report",
    "format_table",
    "pareto_front",
    "plot_pareto",
    "write_tensorboard",
    "write_report",
]

KEY_ROLES = ("original", "quantized", "pruned", "pruned_quantized")
ROLES = KEY_ROLES + ("other",)
_REQUIRED = {
    "name": str,
    "role": str,
    "file": str,
    "accuracy": float,
    "size_bytes": int,
    "gzip_bytes": int,
    "sparsity": float,
    "latency_ms": float,
}


@dataclasses.dataclass
class VariantResult:
    """One row of the report.

    Attributes:
        name: variant name, e.g. "int8" or "pruned_float32".
        role: one of `ROLES`.
        file: the .tflite file, relative to the report's directory.
        accuracy: top-1 accuracy in [0, 1] on the report's split.
        size_bytes: file size.
        gzip_bytes: gzip -9 size.
        sparsity: fraction of zero conv/dense weights in the file.
        latency_ms: median batch-1 latency, one thread.
        latency: {threads: {"median_ms": ..., "p90_ms": ..., "runs": ...}}.
        conversion: how it was converted (see `edgekeras.litert.CONVERSIONS`).
        source: which trained model it came from ("float", "qat", "pruned", "pqat").
        io_dtype: input/output dtype.
        verification: {"examples", "top1_agreement", "max_abs_diff"} from the
            check right after conversion, or None.
        alternating_ms: median batch-1 latency at one thread with every file
            of the run timed in turn in one process (`alternating_medians`),
            so that the ratios between variants hold on a busy machine; None
            when not measured.
    """

    name: str
    role: str
    file: str
    accuracy: float
    size_bytes: int
    gzip_bytes: int
    sparsity: float
    latency_ms: float
    latency: dict = dataclasses.field(default_factory=dict)
    conversion: str = ""
    source: str = ""
    io_dtype: str = "float32"
    verification: dict | None = None
    alternating_ms: float | None = None

    def to_dict(self):
        return dataclasses.asdict(self)


def _fail(message):
    raise ValueError(f"Invalid report: {message}")


def validate_report(report):
    """Checks `report` against the report.json schema and returns it.

    Raises:
        ValueError: naming the first field that is missing or wrong.
    """
    if not isinstance(report, dict):
        _fail(f"expected a dict, received {type(report).__name__}")
    for key, kind in (("dataset", str), ("split", str), ("examples", int), ("variants", list)):
        if key not in report:
            _fail(f"missing key {key!r}")
        if not isinstance(report[key], kind) or isinstance(report[key], bool):
            _fail(f"{key!r} must be {kind.__name__}, received {report[key]!r}")
    if report["examples"] < 1:
        _fail(f"'examples' must be positive, received {report['examples']}")
    seen_roles = {}
    names = set()
    for index, variant in enumerate(report["variants"]):
        where = f"variants[{index}]"
        if not isinstance(variant, dict):
            _fail(f"{where} must be a dict")
        for key, kind in _REQUIRED.items():
            if key not in variant:
                _fail(f"{where} is missing {key!r}")
            value = variant[key]
            kinds = (int, float) if kind is float else kind
            ok = isinstance(value, kinds) and not isinstance(value, bool)
            if not ok:
                _fail(f"{where}.{key} must be {kind.__name__}, received {value!r}")
        if variant["name"] in names:
            _fail(f"{where}: duplicate variant name {variant['name']!r}")
        names.add(variant["name"])
        if variant["role"] not in ROLES:
            _fail(f"{where}.role must be one of {', '.join(ROLES)}, received {variant['role']!r}")
        if variant["role"] != "other":
            if variant["role"] in seen_roles:
                _fail(
                    f"role {variant['role']!r} is held by both {seen_roles[variant['role']]!r} "
                    f"and {variant['name']!r}; each of {', '.join(KEY_ROLES)} may be held once"
                )
            seen_roles[variant["role"]] = variant["name"]
        for key in ("accuracy", "sparsity"):
            if not 0.0 <= variant[key] <= 1.0:
                _fail(f"{where}.{key} must be in [0, 1], received {variant[key]!r}")
        for key in ("size_bytes", "gzip_bytes"):
            if variant[key] <= 0:
                _fail(f"{where}.{key} must be positive, received {variant[key]!r}")
        if not variant["latency_ms"] >= 0.0:
            _fail(f"{where}.latency_ms must be >= 0, received {variant['latency_ms']!r}")
    check_role_choices(report, _fail)
    return report


def build_report(variants, *, dataset, split, examples, **extra):
    """Assembles and validates the report dict.

    Args:
        variants: `VariantResult`s (or dicts with the same keys), in display
            order.
        dataset: dataset name.
        split: the split evaluated on, e.g. "test".
        examples: number of examples each variant was evaluated on.
        **extra: more top-level keys (e.g. `run`, `wall_seconds`).

    Returns:
        The report dict, as written to report.json.

    Raises:
        ValueError: the report does not fit the schema (e.g. two variants
            claim the role "pruned").

    Example:

    ```python
    report = build_report([VariantResult("float32", "original", "float32.tflite",
                                         0.9, 1000, 900, 0.0, 1.2)],
                          dataset="cifar10", split="test", examples=10000)
    ```
    """
    rows = [v.to_dict() if isinstance(v, VariantResult) else dict(v) for v in variants]
    report = {"dataset": dataset, "split": split, "examples": examples, "variants": rows}
    report.update(extra)
    return validate_report(report)


def _size(num_bytes):
    if num_bytes >= 1024 * 1024:
        return f"{num_bytes / (1024 * 1024):.2f} MiB"
    return f"{num_bytes / 1024:.1f} KiB"


def _latency_cell(variant, threads):
    entry = variant.get("latency", {}).get(str(threads)) or variant.get("latency", {}).get(threads)
    if not entry:
        return "–"
    return f"{entry['median_ms']:.2f} / {entry['p90_ms']:.2f}"


def _speed_reference(report):
    """The variant speed-ups are given against: the dense `int8` file, else the `original` one."""
    timed = [v for v in report["variants"] if v.get("alternating_ms")]
    return next((v for v in timed if v["name"] == "int8"), next((v for v in timed if v["role"] == "original"), None))


def _reference(report):
    for variant in report["variants"]:
        if variant["role"] == "original":
            return variant
    return None


def format_table(report):
    """Returns the report as one Markdown table (what report.md holds)."""
    reference = _reference(report)
    threads = sorted({int(t) for v in report["variants"] for t in v.get("latency", {})}) or [1]
    header = ["variant", "role", "accuracy", "Δ vs float", "size", "gzip size"]
    header += [f"latency {t} thr (ms, median / p90)" for t in threads]
    speed = _speed_reference(report)
    if speed is not None:
        header.append(f"speed-up vs {speed['name']} (1 thr, alternating)")
    header += ["sparsity", "agreement", "max abs diff"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for variant in report["variants"]:
        if reference is None:
            delta = "–"
        elif variant is reference:
            delta = "0.00 pp"
        else:
            delta = f"{(variant['accuracy'] - reference['accuracy']) * 100:+.2f} pp"
        verification = variant.get("verification") or {}
        agreement = f"{verification['top1_agreement']:.1%}" if "top1_agreement" in verification else "–"
        difference = f"{verification['max_abs_diff']:.2g}" if "max_abs_diff" in verification else "–"
        row = [
            variant["name"],
            variant["role"],
            f"{variant['accuracy'] * 100:.2f} %",
            delta,
            _size(variant["size_bytes"]),
            _size(variant["gzip_bytes"]),
        ]
        if variant.get("latency"):
            row += [_latency_cell(variant, t) for t in threads]
        else:
            row += [f"{variant['latency_ms']:.2f}"] + ["–"] * (len(threads) - 1)
        if speed is not None:
            row.append(f"{speed['alternating_ms'] / variant['alternating_ms']:.2f}×" if variant.get("alternating_ms") else "–")
        row += [f"{variant['sparsity'] * 100:.1f} %", agreement, difference]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _markdown(report):
    examples = report["examples"]
    intro = (
        f"# edgekeras report: {report['dataset']} ({report['split']} split, {examples} examples)\n\n"
        "Accuracy is top-1 of the .tflite file run by LiteRT. Δ is against the `original` "
        "float model. Latency is batch 1 (median / 90th percentile). Sparsity is the fraction "
        "of zero conv/dense weights inside the file. Agreement (top-1) and max abs diff (of the "
        "output probabilities) compare the file with the Keras model it came from, checked "
        "right after conversion.\n\n"
    )
    choices = report.get("role_choices") or {}
    lines = "".join(f"- {choice_line(role, choice)}\n" for role, choice in choices.items())
    outro = (
        "\nThe \"auto\" roles go to the more accurate int8 file on the validation split (never the test "
        f"split; a tie to the post-training file):\n\n{lines}"
    ) if lines else ""
    return intro + format_table(report) + outro


def write_tensorboard(report, logdir, png=None, step=0):
    """Writes every variant's numbers as scalars (and the plot as an image).

    Scalars are named `report/<variant>/<metric>`, so TensorBoard groups them
    per variant.
    """
    import tensorflow as tf

    writer = tf.summary.create_file_writer(os.fspath(logdir))
    with writer.as_default(step=step):
        for v in report["variants"]:
            prefix = f"report/{v['name']}"
            tf.summary.scalar(f"{prefix}/accuracy", v["accuracy"])
            tf.summary.scalar(f"{prefix}/size_bytes", float(v["size_bytes"]))
            tf.summary.scalar(f"{prefix}/gzip_bytes", float(v["gzip_bytes"]))
            tf.summary.scalar(f"{prefix}/sparsity", v["sparsity"])
            tf.summary.scalar(f"{prefix}/latency_ms", v["latency_ms"])
        if png is not None:
            image = tf.image.decode_png(png, channels=4)[None, ...]
            tf.summary.image("report/pareto", image)
        markdown = format_table(report)
        tf.summary.text("report/table", markdown)
    writer.flush()
    writer.close()


def write_report(report, directory, *, tensorboard_dir=None):
    """Writes report.json, report.md and pareto.png (and TensorBoard events).

    Each file is written atomically.

    Args:
        report: a dict from `build_report`.
        directory: where to write the files.
        tensorboard_dir: if set, also log scalars, the table and the plot
            there.

    Returns:
        {"json": path, "markdown": path, "plot": path}.
    """
    validate_report(report)
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    paths = {
        "json": os.path.join(directory, "report.json"),
        "markdown": os.path.join(directory, "report.md"),
        "plot": os.path.join(directory, "pareto.png"),
    }
    png = plot_pareto(report)
    atomic_write_bytes(paths["plot"], png)
    atomic_write_text(paths["markdown"], _markdown(report))
    atomic_write_json(paths["json"], _json_safe(report))
    if tensorboard_dir is not None:
        write_tensorboard(report, tensorboard_dir, png)
    return paths


def _json_safe(value):
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value
