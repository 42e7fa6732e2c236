"""Writes the READMEs' result tables from the files in `benchmarks/results/`.

Each shipped config's reference run keeps its `report.json` in
`benchmarks/results/<config>/report.json`; README.md holds the table of each
between the markers

    <!-- results: <config> -->
    ...
    <!-- /results: <config> -->

a headline table (the notebook's figures beside the file of each role of
one config's report) between

    <!-- headline: <config> -->
    ...
    <!-- /headline: <config> -->

and a benchmark's committed JSON (a script's `--json` output with a `table`
field, such as `benchmarks/results/ablations/pruning.json`) is published
between

    <!-- table: ablations/pruning.json -->
    ...
    <!-- /table: ablations/pruning.json -->

This script replaces what is between the markers of README.md and
benchmarks/README.md with `edgekeras.app.report.format_table` of the report,
`headline` of it, or the JSON's `table`, so published figures and files cannot disagree;
`tests/test_readme.py` fails when they do.

Run:

    python benchmarks/readme_tables.py            # rewrite both READMEs
    python benchmarks/readme_tables.py --check    # exit 1 if a table is out of date
"""

import argparse
import json
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgekeras.app.report import _size, format_table  # noqa: E402
from edgekeras.io import atomic_write_text  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
READMES = (ROOT / "README.md", ROOT / "benchmarks" / "README.md")
BLOCK = re.compile(
    r"(<!-- (?P<kind>results|headline|table): (?P<name>[\w./-]+) -->\n)(?P<body>.*?)(<!-- /(?P=kind): (?P=name) -->)", re.S
)


# The seed notebook's test accuracies (CIFAR-10, MobileNetV2 transfer model), per report role.
NOTEBOOK = {"original": "81.47 %", "quantized": "79.44 % (dynamic int8)", "pruned": "53.81 %", "pruned_quantized": "–"}


def headline(report):
    """The notebook's accuracy beside the file that holds each role in `report`, as a Markdown table."""
    lines = [
        "| role | notebook | edgekeras file | accuracy | size | gzip size | latency, 1 thread | zeros |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by_role = {variant["role"]: variant for variant in report["variants"]}
    for role, notebook in NOTEBOOK.items():
        variant = by_role.get(role)
        if variant is None:
            continue
        latency = (variant.get("latency") or {}).get("1")
        latency_cell = f"{latency['median_ms']:.2f} ms" if latency else "–"
        lines.append(
            f"| {role} | {notebook} | `{variant['name']}` | **{variant['accuracy'] * 100:.2f} %** | "
            f"{_size(variant['size_bytes'])} | {_size(variant['gzip_bytes'])} | {latency_cell} | "
            f"{variant['sparsity'] * 100:.1f} % |"
        )
    return "\n".join(lines) + "\n"


def table(kind, name):
    """The Markdown table of `benchmarks/results/<name>/report.json` ("results", "headline") or of the JSON file `name` ("table")."""
    path = RESULTS / name / "report.json" if kind in ("results", "headline") else RESULTS / name
    if not path.is_file():
        raise FileNotFoundError(f"a README names {kind} {name!r}, but {path} does not exist")
    data = json.loads(path.read_text())
    if kind == "results":
        return format_table(data).rstrip("\n") + "\n"
    if kind == "headline":
        return headline(data)
    if "table" not in data:
        raise ValueError(f"{path} has no `table` field: a README table comes from a benchmark's --json output")
    return data["table"].rstrip("\n") + "\n"


def render(text):
    """`text` with every results and table block regenerated."""
    return BLOCK.sub(lambda m: m.group(1) + table(m.group("kind"), m.group("name")) + m.group(5), text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", nargs="+", default=[str(path) for path in READMES])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if a table differs")
    args = parser.parse_args()
    stale, count = [], 0
    for readme in args.readme:
        text = pathlib.Path(readme).read_text()
        blocks = list(BLOCK.finditer(text))
        count += len(blocks)
        if args.check:
            stale += [f"{readme}: {m.group('name')}" for m in blocks if m.group("body") != table(m.group("kind"), m.group("name"))]
            continue
        rendered = render(text)
        if rendered != text:
            atomic_write_text(readme, rendered)
    if args.check:
        print("README tables up to date" if not stale else f"stale README tables: {stale}")
        return 1 if stale else 0
    print(f"{count} table(s) written from {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
