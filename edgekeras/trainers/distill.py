"""Distillation inside `EdgeTrainer`'s phases: the loss, the metric and the packed labels.

`EdgeTrainer(distillation=Distillation(...))` trains its pruning and/or QAT
phase against a mix of the labels and the float model's softened outputs
(`edgekeras.distillation`). The teacher's outputs travel in the labels, so
each phase is still a plain `model.fit` on the user's model: arrays get the
teacher's outputs computed once; a `tf.data.Dataset` gets them per batch
(`with_teacher`), unless its labels are packed already (e.g. with outputs
cached beside cached activations, as `edgekeras run` does).
"""

import tensorflow as tf

from edgekeras import distillation

__all__ = ["phase_compile_arguments", "teacher_data"]


def phase_compile_arguments(settings, phase, loss, metrics, keras_module=None):
    """`(loss, metrics)` of a phase: the user's, or the distillation loss and label accuracy.

    Args:
        settings: a `distillation.Distillation`, or None.
        phase: "float", "prune" or "qat".
        loss, metrics: what the user compiles with.
        keras_module: the Keras of the phase's model (None: tf_keras).

    Returns:
        `(loss, metrics)` for `model.compile`. A distilling phase reports its
        top-1 accuracy as `accuracy` (and `val_accuracy`), like the others.

    Example:

    ```python
    loss, metrics = phase_compile_arguments(Distillation(), "prune", "sparse_categorical_crossentropy", ["accuracy"])
    ```
    """
    if settings is None or phase not in settings.phases:
        return loss, metrics
    if keras_module is None:
        return settings.loss(), settings.metrics()
    return settings.loss(keras_module), settings.metrics(keras_module)


def teacher_data(student, teacher, x, fit_kwargs):
    """`(x, fit_kwargs)` whose labels carry `teacher`'s outputs.

    Args:
        student: the model the phase trains (its output size is the number
            of classes).
        teacher: the float model whose outputs are the soft targets.
        x: the phase's training data: a `tf.data.Dataset` of `(x, y)`
            batches, or an array (labels in `fit_kwargs["y"]`).
        fit_kwargs: the phase's `fit` keywords.

    Returns:
        `(x, fit_kwargs)`: data already packed unchanged; a dataset mapped
        through the teacher per batch; arrays with `y` packed once.

    Raises:
        ValueError: data of another kind (a generator or `Sequence`), which
            cannot be packed.

    Example:

    ```python
    x, fit_kwargs = teacher_data(model, float_model, x_train, {"y": y_train, "batch_size": 32})
    ```
    """
    classes = student.output_shape[-1]
    if isinstance(x, tf.data.Dataset):
        if distillation.is_packed(x.element_spec[1], classes):
            return x, fit_kwargs
        return distillation.with_teacher(x, teacher), fit_kwargs
    y = fit_kwargs.get("y")
    if y is not None and hasattr(x, "shape"):
        if distillation.is_packed(y, classes):
            return x, fit_kwargs
        packed = distillation.pack_labels(y, distillation.teacher_outputs(teacher, x))
        return x, dict(fit_kwargs, y=packed)
    raise ValueError(
        "Argument `x` must be arrays (with `y`) or a tf.data.Dataset of (x, y) batches when the trainer "
        f"distils (EdgeTrainer(distillation=...)): the teacher's outputs travel in the labels. Received: x of type "
        f"{type(x).__name__}. Wrap it in a tf.data.Dataset, or pass distillation=None."
    )
