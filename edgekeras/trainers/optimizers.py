"""One fresh optimizer per training phase, each with its own learning rate.

`EdgeTrainer` compiles each phase (float, prune, QAT) with a new optimizer: a
phase must not inherit the previous phase's momentum or step count, and an
optimizer is bound to the variables of the first model it trains (the QAT
phase trains a new model). `make_optimizer` makes that new optimizer from
whatever the user gave (identifier, config, instance or function). Its
`optimizer` argument may be a function `optimizer(phase)`; `phase_optimizer`
builds that function from one learning rate per phase. Every optimizer is
made with the Keras of the model it trains (tf_keras or Keras 3): a function
taking two arguments gets that Keras module as its second.
"""

import inspect

from edgekeras.backend import KERAS_MODULES
from edgekeras.choices import OPTIMIZERS
from edgekeras.compat import keras

__all__ = ["OPTIMIZERS", "check_optimizer", "make_optimizer", "phase_optimizer"]


def _optimizer_types(library):
    """The optimizer base classes of a Keras module (tf_keras has a legacy one too)."""
    legacy = getattr(getattr(library.optimizers, "legacy", None), "Optimizer", None)
    return tuple(kind for kind in (library.optimizers.Optimizer, legacy) if isinstance(kind, type))


def phase_optimizer(learning_rates, *, kind="adam", float_decay_steps=None, decay_steps=None, warmup_steps=None):
    """Returns `optimizer(phase)` for `EdgeTrainer`: a new optimizer per phase.

    Args:
        learning_rates: `{phase: learning rate}` for "float", "prune" and
            "qat", and optionally "channels" (else the channel-pruning
            phase takes the pruning phase's rate).
        kind: "adam" or "sgd" (with momentum 0.9).
        float_decay_steps: when set, the float phase's rate follows a cosine
            decay to 0 over this many steps (the same as
            `decay_steps={"float": n}`).
        decay_steps: `{phase: steps}`: those phases' rates follow a cosine
            decay to 0 over that many optimizer steps of the phase.
        warmup_steps: `{phase: steps}`: before its cosine decay, a phase's
            rate rises linearly from 0 over that many steps (counted within
            `decay_steps`). Pruning from a trained model at a large rate
            needs it: the first steps' gradients are large.

    Returns:
        A function `(phase, keras_module=tf_keras)` returning a new optimizer
        of that Keras; `make_optimizer` passes the model's.

    Example:

    ```python
    optimizer = phase_optimizer({"float": 1e-3, "prune": 5e-4, "qat": 1e-5},
                                decay_steps={"prune": 4000}, warmup_steps={"prune": 400})
    trainer = EdgeTrainer(model, optimizer, "sparse_categorical_crossentropy")
    ```
    """
    missing = sorted({"float", "prune", "qat"} - set(learning_rates))
    if missing:
        raise ValueError(
            f"Argument `learning_rates` must give a rate for every phase; {', '.join(missing)} missing. "
            f"Received: learning_rates={learning_rates!r}"
        )
    if kind not in OPTIMIZERS:
        raise ValueError(f"Argument `kind` must be one of {', '.join(OPTIMIZERS)}. Received: kind={kind!r}")
    decay_steps = dict(decay_steps or {})
    if float_decay_steps:
        decay_steps["float"] = float_decay_steps
    warmup_steps = dict(warmup_steps or {})
    for phase, warmup in warmup_steps.items():
        if warmup and not 0 <= warmup < decay_steps.get(phase, 0):
            raise ValueError(
                f"Argument `warmup_steps` must be within the phase's `decay_steps` ({decay_steps.get(phase)}). "
                f"Received: warmup_steps={warmup_steps!r}"
            )

    def make(phase, keras_module=keras):
        rate = learning_rates.get(phase, learning_rates["prune"]) if phase == "channels" else learning_rates[phase]
        if decay_steps.get(phase):
            warmup = warmup_steps.get(phase, 0)
            rate = keras_module.optimizers.schedules.CosineDecay(
                0.0 if warmup else rate, decay_steps=decay_steps[phase] - warmup,
                warmup_target=rate if warmup else None, warmup_steps=warmup,
            )
        if kind == "sgd":
            return keras_module.optimizers.SGD(rate, momentum=0.9)
        return keras_module.optimizers.Adam(rate)

    return make


def _unknown_kind(optimizer):
    return ValueError(
        "Argument `optimizer` must be a Keras optimizer identifier, config dict, Keras "
        f"Optimizer or a callable returning one. Received: optimizer={optimizer!r}"
    )


def _from_identifier(optimizer, library=keras):
    try:
        return library.optimizers.get(optimizer)  # a fresh one for each call
    except ValueError as error:
        raise ValueError(
            "Argument `optimizer` must be a Keras optimizer identifier such as 'adam'. "
            f"Received: optimizer={optimizer!r} ({error})"
        ) from error


def _from_function(optimizer, phase, library):
    try:
        arguments = len(inspect.signature(optimizer).parameters)
    except (TypeError, ValueError):  # builtins and C callables have no signature
        arguments = 0
    made = optimizer(*(phase, library)[:min(arguments, 2)])
    if not isinstance(made, _optimizer_types(library)):
        raise TypeError(
            f"Argument `optimizer` must return an optimizer of the model's Keras ({library.__name__}). "
            f"Received: optimizer({phase!r}) returned {made!r}"
        )
    return made


def check_optimizer(optimizer):
    """Raises a clear error now for an `optimizer` that `make_optimizer` could not use later.

    A function is only called per phase, so what it returns is checked then.

    Args:
        optimizer: as for `make_optimizer`.

    Raises:
        ValueError: `optimizer` is an unknown identifier or of another kind.

    Example:

    ```python
    check_optimizer("adam")
    ```
    """
    if isinstance(optimizer, (str, dict)):
        _from_identifier(optimizer)
    elif not callable(optimizer) and not any(isinstance(optimizer, _optimizer_types(library)) for library in KERAS_MODULES):
        raise _unknown_kind(optimizer)


def make_optimizer(optimizer, phase, keras_module=keras):
    """Returns a new optimizer for `phase`, whatever form `optimizer` takes.

    Args:
        optimizer: a Keras identifier (`"adam"`), a config dict, an
            `Optimizer` instance (re-created from its config: an optimizer is
            bound to the variables of its first model) or a callable returning
            a new optimizer, taking no argument, the phase name, or the phase
            name and `keras_module`.
        phase: "float", "prune" or "qat", passed to a callable `optimizer`.
        keras_module: the Keras of the model it will train (tf_keras or
            Keras 3's `keras`).

    Returns:
        An optimizer of `keras_module` no model has used yet.

    Raises:
        ValueError: `optimizer` is an unknown identifier or of another kind.
        TypeError: a callable `optimizer` returned something else than an optimizer.

    Example:

    ```python
    make_optimizer(keras.optimizers.SGD(0.01, momentum=0.9), "qat")
    ```
    """
    if isinstance(optimizer, _optimizer_types(keras_module)):
        return type(optimizer).from_config(optimizer.get_config())
    if isinstance(optimizer, (str, dict)):
        return _from_identifier(optimizer, keras_module)
    if any(isinstance(optimizer, _optimizer_types(library)) for library in KERAS_MODULES):
        raise TypeError(
            f"Argument `optimizer` must be an optimizer of the model's Keras ({keras_module.__name__}). "
            f"Received: optimizer={optimizer!r}; pass its name (e.g. 'adam') or a function making one."
        )
    if callable(optimizer):
        return _from_function(optimizer, phase, keras_module)
    raise _unknown_kind(optimizer)
