"""One fresh optimizer per training phase, each with its own learning rate.

`EdgeTrainer` compiles each phase (float, prune, QAT) with a new optimizer: a
phase must not inherit the previous phase's momentum or step count. Its
`optimizer` argument may be a function `optimizer(phase)`; `phase_optimizer`
builds that function from one learning rate per phase.
"""

from edgekeras.compat import keras

__all__ = ["OPTIMIZERS", "phase_optimizer"]

OPTIMIZERS = ("adam", "sgd")


def phase_optimizer(learning_rates, *, kind="adam", float_decay_steps=None):
    """Returns `optimizer(phase)` for `EdgeTrainer`: a new optimizer per phase.

    Args:
        learning_rates: `{phase: learning rate}` for "float", "prune" and "qat".
        kind: "adam" or "sgd" (with momentum 0.9).
        float_decay_steps: when set, the float phase's rate follows a cosine
            decay to 0 over this many steps.

    Returns:
        A function of the phase name returning a tf_keras optimizer.

    Example:

    ```python
    optimizer = phase_optimizer({"float": 1e-3, "prune": 3e-4, "qat": 1e-5})
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

    def make(phase):
        rate = learning_rates[phase]
        if phase == "float" and float_decay_steps:
            rate = keras.optimizers.schedules.CosineDecay(rate, decay_steps=float_decay_steps)
        if kind == "sgd":
            return keras.optimizers.SGD(rate, momentum=0.9)
        return keras.optimizers.Adam(rate)

    return make
