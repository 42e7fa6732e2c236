"""The report's "auto" roles: which int8 file holds `quantized` and `pruned_quantized`.

`report.quantized = "auto"` (the default) gives the role to the better of the
post-training and the quantization-aware int8 file, "int8" or "qat_int8";
`report.pruned_quantized = "auto"` to the better of "pruned_int8" and
"pqat_int8". Better is the higher top-1 accuracy of the .tflite file on the
**validation** split, never on the test split the report is about: the
choice does not peek at the numbers it then reports. A tie goes to the
post-training file (the cheaper recipe). One exported candidate gets the role
without evaluation; with none the role stays empty. A candidate that another
`report` key names explicitly is no candidate: each variant holds one role.

A choice is a dict, kept in report.json (`role_choices`) and state.json:

```
{"chosen": "qat_int8", "split": "validation", "examples": 5000,
 "accuracy": {"int8": 0.901, "qat_int8": 0.903}}
```

The choice of a single candidate is `{"chosen": "pqat_int8", "accuracy": {}}`.

Nothing here imports TensorFlow: `edgekeras.app.config` checks "auto" with
these functions, the `choose_roles` stage (`edgekeras.app.stages`) evaluates
the files.

Example:

```python
from edgekeras.app.roles import pick

pick("quantized", {"int8": 0.901, "qat_int8": 0.903}, 5000)["chosen"]  # 'qat_int8'
```
"""

import os

from edgekeras.app.variants import variant_name
from edgekeras.io import read_json

__all__ = [
    "AUTO", "CANDIDATES", "auto_candidates", "pick", "single", "resolve", "recorded_choices",
    "check_role_choices", "choice_line",
]

AUTO = "auto"
# Post-training first: a tie goes to it.
CANDIDATES = {
    "quantized": (variant_name("float", "int8"), variant_name("qat", "int8")),
    "pruned_quantized": (variant_name("pruned", "int8"), variant_name("pqat", "int8")),
}
_ROLES = ("original", "quantized", "pruned", "pruned_quantized")
# The run directory's state file (`edgekeras.app.state.STATE_FILE`, which imports the config).
_STATE_FILE = "state.json"


def auto_candidates(report, names):
    """{role: [candidate variants among `names`]} of every role `report` sets to "auto".

    Args:
        report: a `ReportSection`.
        names: the variants the run exports.
    """
    named = {getattr(report, role) for role in _ROLES} - {AUTO, ""}
    return {
        role: [name for name in candidates if name in names and name not in named]
        for role, candidates in CANDIDATES.items()
        if getattr(report, role) == AUTO
    }


def pick(role, accuracy, examples):
    """The choice of `role` from `{candidate: validation accuracy}` (in `CANDIDATES` order; ties: the first)."""
    order = [name for name in CANDIDATES[role] if name in accuracy]
    chosen = order[0]
    for name in order[1:]:
        if accuracy[name] > accuracy[chosen]:
            chosen = name
    return {"chosen": chosen, "split": "validation", "examples": int(examples), "accuracy": dict(accuracy)}


def single(name):
    """The choice of the one candidate `name`: no evaluation."""
    return {"chosen": name, "accuracy": {}}


def resolve(report, names, choices):
    """{role: variant} of the "auto" roles: a single candidate, else the choice in `choices`, else "".

    Args:
        report: a `ReportSection`.
        names: the variants the run exports.
        choices: {role: choice} (a choice of another candidate set is ignored).
    """
    resolved = {}
    for role, candidates in auto_candidates(report, names).items():
        chosen = (choices.get(role) or {}).get("chosen", "") if len(candidates) > 1 else "".join(candidates)
        resolved[role] = chosen if chosen in candidates else ""
    return resolved


def recorded_choices(run_dir):
    """{role: choice} the `choose_roles` stage recorded in `run_dir`'s state.json ({} if none)."""
    state = read_json(os.path.join(run_dir, _STATE_FILE))
    choices = state.get("role_choices") if isinstance(state, dict) else None
    return choices if isinstance(choices, dict) else {}


def _check_accuracy(role, choice, fail):
    where = f"role_choices[{role!r}]"
    accuracy = choice["accuracy"]
    for name, value in accuracy.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            fail(f"{where}.accuracy[{name!r}] must be a number in [0, 1], received {value!r}")
    if len(accuracy) == 1:
        fail(f"{where}.accuracy must be empty (one candidate) or hold every candidate, received {accuracy!r}")
    if not accuracy:
        return
    if choice.get("split") != "validation":
        fail(f"{where}.split must be 'validation' (roles are never chosen on the test split), "
             f"received {choice.get('split')!r}")
    examples = choice.get("examples")
    if isinstance(examples, bool) or not isinstance(examples, int) or examples < 1:
        fail(f"{where}.examples must be a positive int, received {examples!r}")
    if choice["chosen"] not in accuracy:
        fail(f"{where}.chosen {choice['chosen']!r} is not among the evaluated {sorted(accuracy)}")
    if accuracy[choice["chosen"]] < max(accuracy.values()):
        fail(f"{where}.chosen {choice['chosen']!r} is not the most accurate of {accuracy!r}")


def check_role_choices(report, fail):
    """Checks `report["role_choices"]` (if present); `fail(message)` raises.

    Each choice must name the variant that holds its role in
    `report["variants"]`, and an evaluated one the most accurate candidate
    on the validation split.
    """
    if "role_choices" not in report:
        return
    choices = report["role_choices"]
    if not isinstance(choices, dict):
        fail(f"'role_choices' must be a dict, received {choices!r}")
    holders = {v.get("role"): v.get("name") for v in report["variants"]}
    for role, choice in choices.items():
        where = f"role_choices[{role!r}]"
        if role not in CANDIDATES:
            fail(f"role_choices keys must be {' or '.join(map(repr, CANDIDATES))}, received {role!r}")
        if not isinstance(choice, dict) or not isinstance(choice.get("chosen"), str):
            fail(f"{where} must be a dict with a 'chosen' variant name, received {choice!r}")
        if not isinstance(choice.get("accuracy"), dict):
            fail(f"{where}.accuracy must be a dict, received {choice.get('accuracy')!r}")
        if holders.get(role) != choice["chosen"]:
            fail(f"{where}.chosen is {choice['chosen']!r} but the role is held by {holders.get(role)!r}")
        _check_accuracy(role, choice, fail)


def choice_line(role, choice):
    """One report.md line: which file holds `role` and why.

    Example: "quantized → qat_int8: 90.30 % vs 90.10 % (int8) on 5,000
    validation images".
    """
    chosen, accuracy = choice["chosen"], choice["accuracy"]
    if not accuracy:
        others = [name for name in CANDIDATES[role] if name != chosen]
        return f"{role} → {chosen}: the only candidate this run exports ({', '.join(others)} is not exported)"
    others = ", ".join(f"{accuracy[name] * 100:.2f} % ({name})" for name in accuracy if name != chosen)
    line = f"{role} → {chosen}: {accuracy[chosen] * 100:.2f} % vs {others} on {choice['examples']:,} validation images"
    if any(accuracy[name] == accuracy[chosen] for name in accuracy if name != chosen):
        line += "; a tie goes to the post-training file"
    return line
