"""Writes the README's result tables from the reference reports in `benchmarks/results/`.

Each shipped config's reference run keeps its `report.json` in
`benchmarks/results/<config>/report.json`; the README holds the table of each
between the markers

    <!-- results: <config> -->
    ...
    <!-- /results: <config> -->

This script replaces what is between them with `edgekeras.app.report.format_table`
of that file, so published figures and files cannot disagree;
`tests/test_readme.py` fails when they do.

Run:

    python benchmarks/readme_tables.py            # rewrite README.md
    python benchmarks/readme_tables.py --check    # exit 1 if a table is out of date
"""

import argparse
import json
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgekeras.app.report import format_table  # noqa: E402
from edgekeras.io import atomic_write_text  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
BLOCK = re.compile(r"(<!-- results: (?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /results: (?P=name) -->)", re.S)


def table(name):
    """The Markdown table of `benchmarks/results/<name>/report.json`."""
    path = RESULTS / name / "report.json"
    if not path.is_file():
        raise FileNotFoundError(f"README names results {name!r}, but {path} does not exist")
    return format_table(json.loads(path.read_text())).rstrip("\n") + "\n"


def render(text):
    """`text` with every results block regenerated."""
    return BLOCK.sub(lambda m: m.group(1) + table(m.group("name")) + m.group(4), text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", default=str(ROOT / "README.md"))
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if a table differs")
    args = parser.parse_args()
    text = pathlib.Path(args.readme).read_text()
    rendered = render(text)
    if args.check:
        stale = [m.group("name") for m in BLOCK.finditer(text) if m.group("body") != table(m.group("name"))]
        print("README tables up to date" if not stale else f"stale README tables: {stale}")
        return 1 if stale else 0
    if rendered != text:
        atomic_write_text(args.readme, rendered)
    print(f"{len(BLOCK.findall(text))} table(s) written from {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
