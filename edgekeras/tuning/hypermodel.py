"""`EdgeHyperModel`: the user's hypermodel with the edgekeras search space first.

`EdgeTuner` accepts a `keras_tuner.HyperModel` or a plain `build(hp)`
function. Both are wrapped here so that every trial declares the
`SearchSpace` hyperparameters before the user's own, and so that a model
which is not a tf_keras model (a Keras 3 one, say) fails with a clear error
when it is built rather than deep inside training.

Example:

```python
import keras_tuner
from edgekeras import keras
from edgekeras.tuning import SearchSpace
from edgekeras.tuning.hypermodel import EdgeHyperModel

def build(hp):
    inputs = keras.Input((8, 8, 3))
    units = hp.Choice("units", [4, 8])
    return keras.Model(inputs, keras.layers.Dense(units)(keras.layers.Flatten()(inputs)))

hypermodel = EdgeHyperModel(build, SearchSpace(qat_epochs=0))
hp = keras_tuner.HyperParameters()
hypermodel.declare_hyperparameters(hp)
model = hypermodel.build(hp)
```
"""

import keras_tuner

from edgekeras.backend import check_model
from edgekeras.tuning.search_space import SearchSpace

__all__ = ["EdgeHyperModel"]


def _check_hypermodel(hypermodel):
    if hypermodel is None or not (isinstance(hypermodel, keras_tuner.HyperModel) or callable(hypermodel)):
        raise ValueError(
            "Argument `hypermodel` must be a keras_tuner.HyperModel or a function build(hp) "
            f"returning a tf_keras model. Received: hypermodel={hypermodel!r}"
        )


def _check_search_space(search_space):
    """Returns `search_space`, or the default `SearchSpace()` for None."""
    if search_space is None:
        return SearchSpace()
    if not isinstance(search_space, SearchSpace):
        raise ValueError(
            f"Argument `search_space` must be an edgekeras.tuning.SearchSpace. Received: search_space={search_space!r}"
        )
    return search_space


class EdgeHyperModel(keras_tuner.HyperModel):
    """The user's hypermodel with the edgekeras search space declared first.

    Args:
        hypermodel: a `keras_tuner.HyperModel` or a function `build(hp)`
            returning a tf_keras functional or Sequential model.
        search_space: the edgekeras hyperparameters (`SearchSpace`); default
            `SearchSpace()`.

    Example:

    ```python
    hypermodel = EdgeHyperModel(build, SearchSpace(final_sparsity=(0.5, 0.9)))
    ```
    """

    def __init__(self, hypermodel, search_space=None):
        _check_hypermodel(hypermodel)
        search_space = _check_search_space(search_space)
        super().__init__(name=getattr(hypermodel, "name", None))
        self.inner = hypermodel if isinstance(hypermodel, keras_tuner.HyperModel) else None
        self.build_function = hypermodel
        self.search_space = search_space

    def declare_hyperparameters(self, hp):
        """Declares the search space's hyperparameters, then the user's."""
        self.search_space.declare(hp)
        if self.inner is not None:
            self.inner.declare_hyperparameters(hp)

    def build(self, hp):
        """Builds the user's model for `hp`; refuses anything but a Keras model (tf_keras or Keras 3)."""
        model = self.inner.build(hp) if self.inner is not None else self.build_function(hp)
        return check_model(model, "the model returned by `hypermodel`")
