"""`SearchSpace`: the hyperparameters every `EdgeTuner` trial draws.

The learning rate, the final sparsity, where the pruning ramp begins and ends
(as fractions of the pruning phase), the number of QAT epochs and the
channel-pruning latency target (1.0: no channel pruning). Each is a
range, a list of choices or a fixed number; users add their own
hyperparameters in their `HyperModel` / build function as usual.

Example:

```python
import keras_tuner
from edgekeras.tuning import SearchSpace

space = SearchSpace(learning_rate=(1e-4, 1e-2), final_sparsity={"values": [0.5, 0.75]}, qat_epochs=0)
hp = keras_tuner.HyperParameters()
space.declare(hp)
print(space.values(hp))  # {'learning_rate': 0.0001, 'final_sparsity': 0.5, ...}
```
"""

import numbers

__all__ = ["SearchSpace"]


_SPECS = ("learning_rate", "final_sparsity", "pruning_begin", "pruning_end", "qat_epochs", "target_latency")


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _normalize(name, spec, integer):
    """Returns ("fixed", v) / ("range", lo, hi, step) / ("choice", values)."""
    how = "a number (fixed), a [min, max] pair, {min = ..., max = ..., step = ...} or {values = [...]}"
    if _is_number(spec):
        return ("fixed", spec)
    if isinstance(spec, (tuple, list)) and len(spec) == 2 and all(_is_number(v) for v in spec):
        spec = {"min": spec[0], "max": spec[1]}
    if isinstance(spec, dict) and set(spec) == {"values"}:
        values = spec["values"]
        if not isinstance(values, (tuple, list)) or not values or not all(_is_number(v) for v in values):
            raise ValueError(f"Argument `{name}` must be {how}. Received: {name}={spec!r}")
        return ("choice", tuple(values))
    if isinstance(spec, dict) and {"min", "max"} <= set(spec) <= {"min", "max", "step"}:
        low, high, step = spec["min"], spec["max"], spec.get("step")
        if not (_is_number(low) and _is_number(high)) or low >= high or (step is not None and not (_is_number(step) and step > 0)):
            raise ValueError(
                f"Argument `{name}` must have numbers min < max (and step > 0). Received: {name}={spec!r}"
            )
        if integer and not all(float(v).is_integer() for v in (low, high, step or 1)):
            raise ValueError(f"Argument `{name}` must have integer bounds. Received: {name}={spec!r}")
        return ("range", low, high, step)
    raise ValueError(f"Argument `{name}` must be {how}. Received: {name}={spec!r}")


def _possible(spec):
    """The smallest and largest value a normalized spec can take."""
    if spec[0] == "fixed":
        return spec[1], spec[1]
    if spec[0] == "choice":
        return min(spec[1]), max(spec[1])
    return spec[1], spec[2]


class SearchSpace:
    """The edgekeras hyperparameters each trial draws.

    Each argument is a fixed number, a `(min, max)` pair (a range), a dict
    `{"min": ..., "max": ..., "step": ...}` or `{"values": [...]}` (choices).
    The names below are the keras-tuner hyperparameter names.

    Args:
        learning_rate: learning rate of every phase (log-uniform when a
            range without step).
        final_sparsity: fraction of zeros the pruning phase ends at, in
            [0, 1); 0 means "no pruning" (the pruning epochs then train
            densely, so every trial trains as long).
        pruning_begin: where the sparsity ramp begins, as a fraction of the
            pruning phase, in [0, 1).
        pruning_end: where the ramp reaches `final_sparsity`, a fraction in
            (0, 1]; every possible end must lie after every possible begin.
        qat_epochs: epochs of quantization-aware fine-tuning (integers >= 0).
        target_latency: the slimmed int8 file's predicted latency as a
            fraction of the dense one's, in (0, 1]: below 1, the trial prunes
            whole channels after its float phase (widths from a latency
            table measured once per search) and deploys the narrower model;
            1.0 (the default): no channel pruning, and no hyperparameter
            declared, so existing searches draw and log what they did.

    Example:

    ```python
    space = SearchSpace(final_sparsity={"min": 0.5, "max": 0.9, "step": 0.1}, qat_epochs=1,
                        target_latency={"values": [0.6, 0.8, 1.0]})
    ```
    """

    def __init__(
        self,
        learning_rate=(1e-4, 1e-2),
        final_sparsity=(0.3, 0.9),
        pruning_begin=(0.0, 0.3),
        pruning_end=(0.6, 1.0),
        qat_epochs=(0, 1),
        target_latency=1.0,
    ):
        self.learning_rate = learning_rate
        self.final_sparsity = final_sparsity
        self.pruning_begin = pruning_begin
        self.pruning_end = pruning_end
        self.qat_epochs = qat_epochs
        self.target_latency = target_latency
        self._specs = {name: _normalize(name, getattr(self, name), name == "qat_epochs") for name in _SPECS}
        limits = {
            "learning_rate": (lambda lo, hi: lo > 0, "> 0"),
            "final_sparsity": (lambda lo, hi: 0 <= lo and hi < 1, "in [0, 1)"),
            "pruning_begin": (lambda lo, hi: 0 <= lo and hi < 1, "in [0, 1)"),
            "pruning_end": (lambda lo, hi: 0 < lo and hi <= 1, "in (0, 1]"),
            "qat_epochs": (lambda lo, hi: lo >= 0, ">= 0"),
            "target_latency": (lambda lo, hi: 0 < lo and hi <= 1, "in (0, 1]"),
        }
        for name, (ok, requirement) in limits.items():
            if not ok(*_possible(self._specs[name])):
                raise ValueError(f"Argument `{name}` must be {requirement}. Received: {name}={getattr(self, name)!r}")
        spec = self._specs["qat_epochs"]
        values = (spec[1],) if spec[0] == "fixed" else spec[1] if spec[0] == "choice" else ()
        if not all(float(v).is_integer() for v in values):
            raise ValueError(f"Argument `qat_epochs` must hold integers. Received: qat_epochs={qat_epochs!r}")
        if _possible(self._specs["pruning_begin"])[1] >= _possible(self._specs["pruning_end"])[0]:
            raise ValueError(
                "Arguments `pruning_begin` and `pruning_end` overlap: every possible begin must be "
                f"smaller than every possible end. Received: pruning_begin={pruning_begin!r}, "
                f"pruning_end={pruning_end!r}"
            )

    def _declared(self):
        """The names `declare` registers: `target_latency` only when it can be below 1."""
        # Left out at its default, it changes nothing in an existing search:
        # not its random draws (each declared value takes one), nor its HParams.
        return [name for name in _SPECS if name != "target_latency" or _possible(self._specs[name])[0] < 1]

    def declare(self, hp):
        """Registers the hyperparameters in a `keras_tuner.HyperParameters`."""
        for name in self._declared():
            spec = self._specs[name]
            integer = name == "qat_epochs"
            if spec[0] == "fixed":
                hp.Fixed(name, int(spec[1]) if integer else float(spec[1]))
            elif spec[0] == "choice":
                hp.Choice(name, [int(v) if integer else float(v) for v in spec[1]])
            elif integer:
                hp.Int(name, int(spec[1]), int(spec[2]), step=int(spec[3] or 1))
            else:
                sampling = "log" if name == "learning_rate" and spec[3] is None else "linear"
                step = None if spec[3] is None else float(spec[3])
                hp.Float(name, float(spec[1]), float(spec[2]), step=step, sampling=sampling)

    def values(self, hp):
        """Returns `{name: value}` of this space's hyperparameters in `hp` (`target_latency` 1.0 when not declared)."""
        return {name: hp.get(name) if name in self._declared() else 1.0 for name in _SPECS}

    def get_config(self):
        return {name: getattr(self, name) for name in _SPECS}

    @classmethod
    def from_config(cls, config):
        unknown = sorted(set(config) - set(_SPECS))
        if unknown:
            raise ValueError(
                f"Unknown search-space key `{unknown[0]}`. Valid keys: {', '.join(_SPECS)}."
            )
        return cls(**config)

    def __repr__(self):
        items = ", ".join(f"{name}={getattr(self, name)!r}" for name in _SPECS)
        return f"SearchSpace({items})"
