"""Pruning schedules: when to update the masks, and to which sparsity.

These are TFMOT's schedules (`tfmot.sparsity.keras.ConstantSparsity` and
`PolynomialDecay`), subclassed only to check their arguments with messages that
name the argument and the value received; the sparsity curves themselves are
TFMOT's `__call__`. `MbyNSparsity` adds m-by-n structured sparsity (e.g. 2:4)
as a schedule, so that every kind of pruning is chosen the same way.

A schedule is called with the global step (`model.optimizer.iterations`) and
returns `(should_prune, sparsity)`: whether the masks are recomputed at this
step, and the fraction of zeros they get. Any TFMOT `PruningSchedule` works
with `edgekeras.callbacks.MagnitudePruning`; these classes serialize to the
same `{"class_name", "config"}` dictionaries as TFMOT's.

`schedule_at(schedule, step)` gives the same answer in plain Python for a
step number: edgekeras' schedules compute it without TensorFlow (`at_step`,
in float32 as TFMOT does), which is what the Keras 3 callbacks call after
every batch, on any backend.
"""

import numbers

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot

__all__ = [
    "ConstantSparsity",
    "PolynomialDecay",
    "MbyNSparsity",
    "PruningSchedule",
    "polynomial_ramp",
    "serialize",
    "deserialize",
    "schedule_sparsity",
    "schedule_at",
]

# The base class every schedule derives from, TFMOT's and edgekeras' alike.
PruningSchedule = tfmot.sparsity.keras.PruningSchedule


def _check_int(value, argument, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"Argument `{argument}` must be {what}. Received: {argument}={value!r}")


def _check_steps(begin_step, end_step, frequency, allow_endless):
    _check_int(begin_step, "begin_step", 0)
    if allow_endless and end_step == -1:
        pass
    elif isinstance(end_step, bool) or not isinstance(end_step, numbers.Integral) or end_step < begin_step:
        allowed = "-1 (never stop) or an integer" if allow_endless else "an integer"
        raise ValueError(
            f"Argument `end_step` must be {allowed} >= begin_step ({begin_step!r}). "
            f"Received: end_step={end_step!r}"
        )
    _check_int(frequency, "frequency", 1)


def _should_prune(step, begin_step, end_step, frequency):
    """TFMOT's `_should_prune_in_step` for a Python int."""
    return step >= begin_step and (step <= end_step or end_step < 0) and (step - begin_step) % frequency == 0


def _check_sparsity(value, argument):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value < 1.0:
        raise ValueError(f"Argument `{argument}` must be in [0, 1). Received: {argument}={value!r}")


class ConstantSparsity(tfmot.sparsity.keras.ConstantSparsity):
    """The same sparsity every `frequency` steps in [`begin_step`, `end_step`].

    Args:
        target_sparsity: fraction of zeros, in [0, 1).
        begin_step: first global step at which the masks are computed.
        end_step: last step at which the masks are recomputed; -1 keeps
            recomputing them until training ends. Masks stay applied after it.
        frequency: recompute the masks every `frequency` steps.

    Example:

    ```python
    schedule = ConstantSparsity(0.5, begin_step=0, frequency=10)
    should_prune, sparsity = schedule(tf.constant(10, tf.int64))
    ```
    """

    def __init__(self, target_sparsity, begin_step=0, end_step=-1, frequency=100):
        _check_sparsity(target_sparsity, "target_sparsity")
        _check_steps(begin_step, end_step, frequency, allow_endless=True)
        super().__init__(float(target_sparsity), int(begin_step), int(end_step), int(frequency))

    def at_step(self, step):
        """`(should_prune, sparsity)` at an int `step`, as `__call__` gives them, in plain Python."""
        return (
            _should_prune(int(step), self.begin_step, self.end_step, self.frequency),
            float(np.float32(self.target_sparsity)),
        )


class PolynomialDecay(tfmot.sparsity.keras.PolynomialDecay):
    """Sparsity rising from `initial_sparsity` to `final_sparsity` (Zhu & Gupta).

    `sparsity(step) = final + (initial - final) * (1 - p) ** power` with
    `p = (step - begin_step) / (end_step - begin_step)` clipped to [0, 1]:
    fast at first, flat near the end, so the network recovers as it goes.

    Args:
        initial_sparsity: sparsity at `begin_step`, in [0, 1).
        final_sparsity: sparsity from `end_step` on, in [0, 1).
        begin_step: first global step at which masks are computed.
        end_step: step at which `final_sparsity` is reached (> begin_step).
        power: exponent of the curve (> 0).
        frequency: recompute the masks every `frequency` steps.

    Example:

    ```python
    schedule = PolynomialDecay(0.0, 0.75, begin_step=0, end_step=1000, frequency=50)
    ```
    """

    def __init__(self, initial_sparsity, final_sparsity, begin_step, end_step, power=3, frequency=100):
        _check_sparsity(initial_sparsity, "initial_sparsity")
        _check_sparsity(final_sparsity, "final_sparsity")
        _check_steps(begin_step, end_step, frequency, allow_endless=False)
        if end_step == begin_step:
            raise ValueError(
                f"Argument `end_step` must be greater than begin_step ({begin_step}) "
                f"for a decay. Received: end_step={end_step!r}. Use ConstantSparsity "
                "to prune to one sparsity at once."
            )
        if isinstance(power, bool) or not isinstance(power, numbers.Real) or power <= 0:
            raise ValueError(f"Argument `power` must be a positive number. Received: power={power!r}")
        super().__init__(
            float(initial_sparsity),
            float(final_sparsity),
            int(begin_step),
            int(end_step),
            power=power,
            frequency=int(frequency),
        )

    def at_step(self, step):
        """`(should_prune, sparsity)` at an int `step`, as `__call__` gives them, in plain Python.

        The arithmetic is TFMOT's, in float32, so both give the same float.
        """
        step = int(step)
        span = np.float32(self.end_step - self.begin_step)
        progress = np.minimum(np.float32(1.0), np.maximum(np.float32(0.0), np.float32(step - self.begin_step) / span))
        # A numpy float32 scalar raised to the Python power rounds as TF's
        # scalar pow does (np.power on arrays does not, by an ulp at times).
        decay = (np.float32(1.0) - progress) ** self.power
        value = np.float32(self.initial_sparsity - self.final_sparsity) * decay + np.float32(self.final_sparsity)
        return _should_prune(step, self.begin_step, self.end_step, self.frequency), float(np.float32(value))


class MbyNSparsity(PruningSchedule):
    """Structured sparsity: in every block of `n` weights, `m` are zero.

    Blocks run along the input-channel axis of the TFLite weight layout
    (`[out, h, w, in]` for convolutions, `[out, in]` for Dense), the layout
    that 2:4 sparse kernels read. The masks come from TFMOT's
    `pruning_utils.generate_m_by_n_mask`.

    Args:
        m_by_n: `(m, n)`: `m` zeros in every `n` consecutive weights, with
            `0 < m < n`. Default (2, 4).
        begin_step: first global step at which the masks are computed.
        end_step: last step at which they are recomputed; -1: until training
            ends.
        frequency: recompute the masks every `frequency` steps.

    Example:

    ```python
    schedule = MbyNSparsity((2, 4), begin_step=0, frequency=20)
    ```
    """

    def __init__(self, m_by_n=(2, 4), begin_step=0, end_step=-1, frequency=100):
        valid = (
            isinstance(m_by_n, (tuple, list))
            and len(m_by_n) == 2
            and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in m_by_n)
            and 0 < m_by_n[0] < m_by_n[1]
        )
        if not valid:
            raise ValueError(
                "Argument `m_by_n` must be a pair of integers (m, n) with 0 < m < n, "
                f"e.g. (2, 4). Received: m_by_n={m_by_n!r}"
            )
        _check_steps(begin_step, end_step, frequency, allow_endless=True)
        self.m_by_n = (int(m_by_n[0]), int(m_by_n[1]))
        self.begin_step = int(begin_step)
        self.end_step = int(end_step)
        self.frequency = int(frequency)

    def __call__(self, step):
        should_prune = self._should_prune_in_step(step, self.begin_step, self.end_step, self.frequency)
        return should_prune, tf.constant(self.m_by_n[0] / self.m_by_n[1], tf.float32)

    def at_step(self, step):
        """`(should_prune, sparsity)` at an int `step`, as `__call__` gives them, in plain Python."""
        return (
            _should_prune(int(step), self.begin_step, self.end_step, self.frequency),
            float(np.float32(self.m_by_n[0] / self.m_by_n[1])),
        )

    def get_config(self):
        return {
            "class_name": type(self).__name__,
            "config": {
                "m_by_n": list(self.m_by_n),
                "begin_step": self.begin_step,
                "end_step": self.end_step,
                "frequency": self.frequency,
            },
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["m_by_n"] = tuple(config["m_by_n"])
        return cls(**config)


_SCHEDULES = {cls.__name__: cls for cls in (ConstantSparsity, PolynomialDecay, MbyNSparsity)}


def serialize(schedule):
    """Returns `schedule.get_config()`, checking that it is a pruning schedule."""
    if not isinstance(schedule, PruningSchedule):
        raise TypeError(
            "Argument `schedule` must be a pruning schedule such as "
            "edgekeras.schedules.PolynomialDecay(...) or a "
            f"tfmot.sparsity.keras.PruningSchedule. Received: schedule={schedule!r}"
        )
    return schedule.get_config()


def deserialize(config, custom_objects=None):
    """Rebuilds a schedule from `serialize`'s output.

    Args:
        config: a `{"class_name": ..., "config": {...}}` dictionary.
        custom_objects: optional `{name: class}` for user-defined schedules.

    Returns:
        A pruning schedule. TFMOT's class names map to edgekeras' validated
        subclasses, which compute the same sparsities.
    """
    if not isinstance(config, dict) or "class_name" not in config or "config" not in config:
        raise ValueError(
            'Argument `config` must be a dictionary {"class_name": ..., "config": {...}} '
            f"as returned by serialize(schedule). Received: config={config!r}"
        )
    classes = dict(_SCHEDULES)
    classes.update(custom_objects or {})
    name = config["class_name"]
    if name not in classes:
        raise ValueError(
            f"Unknown pruning schedule {name!r}. Known: {sorted(classes)}. Pass "
            "custom schedules through `custom_objects={name: class}`."
        )
    return classes[name].from_config(config["config"])


def schedule_sparsity(schedule, step):
    """Returns the sparsity a schedule asks for at `step` as a Python float.

    Steps before `begin_step` give 0: no mask exists yet.
    """
    if step < schedule.begin_step:
        return 0.0
    _, sparsity = schedule(tf.constant(step, tf.int64))
    return float(sparsity)


def schedule_at(schedule, step):
    """Returns `(should_prune, sparsity)` of a schedule at an int step, as Python values.

    edgekeras' schedules answer in plain Python (`at_step`); any other
    `PruningSchedule` is called eagerly with the step as a tensor.

    Args:
        schedule: a pruning schedule.
        step: the global step, an int.

    Returns:
        A `(bool, float)` pair.

    Example:

    ```python
    schedule_at(ConstantSparsity(0.5, frequency=10), 20)  # (True, 0.5)
    ```
    """
    at_step = getattr(schedule, "at_step", None)
    if at_step is not None:
        return at_step(step)
    should_prune, sparsity = schedule(tf.constant(int(step), tf.int64))
    return bool(should_prune), float(sparsity)


def polynomial_ramp(
    total_steps, final_sparsity, *, initial_sparsity=0.0, begin=0.0, end=2 / 3, mask_updates=10, power=3
):
    """A `PolynomialDecay` placed on a phase of `total_steps` steps by fractions.

    The ramp starts at `begin * total_steps` and ends near `end * total_steps`:
    its length is rounded down to a whole number of mask updates, so the last
    update lands exactly on the final sparsity, and what remains of the phase
    fine-tunes at that sparsity.

    Args:
        total_steps: training steps of the pruning phase.
        final_sparsity: sparsity at the end of the ramp, in [0, 1).
        initial_sparsity: sparsity of the first mask.
        begin: where the ramp starts, as a fraction of the phase.
        end: where it ends, as a fraction of the phase (> `begin`).
        mask_updates: how often the masks are recomputed along the ramp.
        power: exponent of the polynomial.

    Returns:
        A `PolynomialDecay`.

    Example:

    ```python
    schedule = polynomial_ramp(1000, 0.8, end=0.6)  # 0 -> 80 % over 600 steps
    ```
    """
    _check_int(total_steps, "total_steps", 1)
    _check_int(mask_updates, "mask_updates", 1)
    if not 0.0 <= begin < end <= 1.0:
        raise ValueError(f"Arguments `begin` and `end` must satisfy 0 <= begin < end <= 1. Received: begin={begin!r}, end={end!r}")
    begin_step = int(round(begin * total_steps))
    length = max(1, int(end * total_steps) - begin_step)
    frequency = max(1, length // mask_updates)
    length = max(frequency, length - length % frequency)
    return PolynomialDecay(
        initial_sparsity, final_sparsity, begin_step=begin_step, end_step=begin_step + length, power=power, frequency=frequency
    )
