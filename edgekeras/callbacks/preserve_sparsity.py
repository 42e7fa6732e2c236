"""`PreserveSparsity`: keep a pruned model's zeros through further training."""

from edgekeras.callbacks.masking import MaskingCallback

__all__ = ["PreserveSparsity"]


class PreserveSparsity(MaskingCallback):
    """Keeps the zeros a model already has through further training.

    For fine-tuning a pruned model (plainly, or quantization-aware with a
    scheme that does not preserve sparsity for every layer): the masks are
    the kernels' non-zeros at the start of `fit`, applied after every batch,
    and the optimizer's slots are zeroed at the pruned positions. Logs
    `sparsity`, `sparsity/<layer name>` and `learning_rate` each epoch.

    Args:
        policy: which layers to hold, as in `MagnitudePruning`.
        include_frozen: also hold layers with `trainable=False` (whose
            weights do not change anyway).

    Example:

    ```python
    import numpy as np
    from edgekeras import keras
    from edgekeras.callbacks import PreserveSparsity

    model = keras.Sequential([keras.layers.Dense(4, input_shape=(8,))])
    kernel = model.layers[0].kernel
    kernel.assign(kernel * np.random.binomial(1, 0.5, kernel.shape))  # a pruned kernel
    model.compile("adam", "mse")
    model.fit(np.random.rand(32, 8), np.random.rand(32, 4), epochs=1,
              callbacks=[PreserveSparsity()], verbose=0)  # the zeros stay zeros
    ```
    """

    def get_config(self):
        return {"policy": self.policy, "include_frozen": self.include_frozen}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def on_train_begin(self, logs=None):
        self._select()
        for weight, mask in zip(self._weights, self._masks):
            values = self._backend.to_numpy(weight)
            mask.assign((values != 0).astype(values.dtype))
        self._prepare_step()
        self._apply_now(zero_slots=True)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self._weights:
            self._layer_logs(logs)

    def on_train_end(self, logs=None):
        if not self._weights:
            return
        if self._slots is None:
            self._resolve_slots()
        self._apply_now(zero_slots=True)
