"""Where edgekeras gets tf_keras from, and the check of code that takes tf_keras models only.

TensorFlow 2.16+ resolves `tf.keras` lazily: to Keras 3 unless
`TF_USE_LEGACY_KERAS=1` is set before the first access, and TFMOT sets that
variable as a side effect of being imported. Going through `tf.keras` would
therefore hand edgekeras a different Keras depending on the user's import
order. Importing `tf_keras` directly always gives Keras 2, the only Keras that
TFMOT 0.8 supports, whatever the environment says.

Code that accepts Keras 3 models too asks `edgekeras.backend`, which builds
on `is_keras3_object`; `check_model` here is for the code that does not yet.
"""

import tf_keras as keras

__all__ = ["keras", "is_keras3_object", "check_model"]


def is_keras3_object(obj):
    """Returns True if `obj` is an instance of a Keras 3 class, or of a subclass of one.

    The class hierarchy is read, not only the object's own class: a model
    subclassed in the user's `__main__` is a Keras 3 model all the same.
    """
    for cls in type(obj).__mro__:
        module = cls.__module__ or ""
        if module == "keras" or module.startswith("keras."):
            return True
    return False


def check_model(model, argument="model"):
    """Checks that `model` is a tf_keras model and returns it.

    Args:
        model: the object to check.
        argument: the argument name to use in the error message.

    Returns:
        `model`, unchanged.

    Raises:
        TypeError: if `model` is a Keras 3 model or not a Keras model at all.
    """
    if isinstance(model, keras.Model):
        return model
    if is_keras3_object(model):
        raise TypeError(
            f"Argument `{argument}` is a Keras 3 model ({type(model).__module__}."
            f"{type(model).__name__}), but edgekeras needs a tf_keras (Keras 2) "
            "model because TensorFlow Model Optimization only supports Keras 2. "
            f"Received: {argument}={model!r}. "
            "Build the model with `from edgekeras import keras` (or "
            "`import tf_keras as keras`), or set TF_USE_LEGACY_KERAS=1 before "
            "importing tensorflow and use `tf.keras`."
        )
    raise TypeError(
        f"Argument `{argument}` must be a tf_keras `keras.Model`. "
        f"Received: {argument}={model!r} (type {type(model).__name__})"
    )
