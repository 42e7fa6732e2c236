"""Builds the quantization-aware Keras 3 model of a `keras3_graph.Plan`.

Every step becomes a layer of the new model: a `QuantizedWeighted` for a
convolution or Dense and the chain it absorbed, a `ConstantOp` for constant
arithmetic, a copy of the float layer (same config, same weights, same
`trainable`) for the rest, and an `ActivationQuantizer` after each step whose
output the plan quantizes (one shared by a Concatenate and its inputs), or a
`FixedQuantizer` after a sigmoid, softmax or tanh. The float model is left untouched: nothing of it
is reused but the stateless keras ops of its graph.

Example:

```python
qat_model = build(plan(model), preserve_sparsity=False, enabled=True, ema_decay=0.999)
```
"""

import keras
import numpy as np

from edgekeras.qat.keras3_layers import ActivationQuantizer, ConstantOp, FixedQuantizer, QuantizedWeighted

__all__ = ["build"]

# The int8 output ranges TFLite fixes for these ops (scale 1/256 or 1/128): the Keras
# model rounds to the same levels as the file, ties between classes included.
_FIXED_RANGES = {"sigmoid": (0.0, 255 / 256), "softmax": (0.0, 255 / 256), "tanh": (-1.0, 127 / 128)}


class _Builder:
    def __init__(self, graph, preserve_sparsity, enabled, ema_decay):
        self.graph, self.preserve_sparsity, self.enabled, self.ema_decay = graph, preserve_sparsity, enabled, ema_decay
        self.tensors, self.names, self.copies, self.wrappers = {}, set(), [], []
        self.shared = {}

    def unique(self, name):
        candidate, index = name, 0
        while candidate in self.names:
            index += 1
            candidate = f"{name}_{index}"
        self.names.add(candidate)
        return candidate

    def clone(self, layer, **changes):
        config = {**layer.get_config(), **changes, "name": self.unique(layer.name)}
        if isinstance(layer, keras.layers.Lambda):
            # The user's own function, copied in memory: nothing untrusted is deserialized.
            copy = type(layer).from_config(config, safe_mode=False)
        else:
            copy = type(layer).from_config(config)
        self.copies.append((copy, layer))
        return copy

    def quantizer(self, name):
        return ActivationQuantizer(ema_decay=self.ema_decay, enabled=self.enabled, name=self.unique(f"{name}_quant"))

    def shared_quantizer(self, step):
        """The output quantizer of a same-scale step, which its inputs' ranges are too."""
        if id(step) not in self.shared:
            self.shared[id(step)] = self.quantizer(step.name)
        return self.shared[id(step)]

    def quantize_output(self, step, final, outputs):
        if final.share is not None:
            return self.shared_quantizer(final.share)(outputs, observe=False)
        if step.kind == "concat":
            return self.shared_quantizer(step)(outputs)
        return self.quantizer(step.name)(outputs)

    def fixed_range(self, step, outputs):
        name = "softmax" if isinstance(step.layer, keras.layers.Softmax) else step.info.get("activation")
        low, high = _FIXED_RANGES[name]
        return FixedQuantizer(low, high, enabled=self.enabled, name=self.unique(f"{step.name}_quant"))(outputs)

    def call(self, step, operation):
        """Calls `operation` with the step's inputs in the float node's argument structure."""
        node = step.node
        if node is None:
            return operation(self.tensors[step.inputs[0]])
        values = {id(t): self.tensors[self.graph.key(t)] for t in node.input_tensors}
        args, kwargs = node.arguments.fill_in(values)
        return operation(*args, **kwargs)

    def weighted(self, step):
        layer, batch_norm, steps, activation = step.layer, None, [], "linear"
        for absorbed in step.chain:
            if absorbed.kind == "bn":
                batch_norm = self.clone(absorbed.layer)
                steps.append(["bn", None])
            elif absorbed.kind == "const":
                steps.append([absorbed.info["op"], absorbed.info["value"]])
            else:
                activation = "relu6" if absorbed.info.get("max_value") == 6.0 else "relu"
        wrapper = QuantizedWeighted(
            self.clone(layer, activation="linear"), batch_norm=batch_norm, steps=steps, activation=activation,
            input_steps=[[before.info["op"], before.info["value"]] for before in step.pre_chain],
            preserve_sparsity=self.preserve_sparsity, enabled=self.enabled, name=self.unique(f"{layer.name}_qat"),
        )
        self.wrappers.append(wrapper)
        return wrapper(self.tensors[(step.pre_chain[0] if step.pre_chain else step).inputs[0]])

    def batch_norm(self, step):
        """A BatchNormalization no convolution absorbed: MUL and ADD by its frozen statistics."""
        bn = step.layer
        gamma = keras.ops.convert_to_numpy(bn.gamma) if bn.scale else 1.0
        beta = keras.ops.convert_to_numpy(bn.beta) if bn.center else 0.0
        factor = gamma / np.sqrt(keras.ops.convert_to_numpy(bn.moving_variance) + bn.epsilon)
        shift = beta - keras.ops.convert_to_numpy(bn.moving_mean) * factor
        outputs = self.tensors[step.inputs[0]]
        # The converter drops a multiplication by ones and an addition of zeros (a fresh layer's shift).
        if np.any(factor != 1.0):
            outputs = ConstantOp("mul", factor, name=self.unique(f"{bn.name}_mul"))(outputs)
            if np.any(shift != 0.0):
                outputs = self.quantizer(f"{bn.name}_mul")(outputs)
        if np.any(shift != 0.0):
            outputs = ConstantOp("add", shift, name=self.unique(f"{bn.name}_add"))(outputs)
        return outputs

    def step(self, step):
        if step.kind == "input":
            tensor = next(t for t in self.graph.inputs if id(t) == step.output)
            created = keras.Input(shape=tensor.shape[1:], dtype=tensor.dtype, name=self.unique(tensor.name))
            self.new_inputs.append(created)
            return created
        if step.kind == "weighted":
            return self.weighted(step)
        if step.kind == "bn":
            return self.batch_norm(step)
        if step.kind == "const":
            constant = ConstantOp(step.info["op"], step.info["value"], name=self.unique(step.name))
            return constant(self.tensors[step.inputs[0]])
        if isinstance(step.layer, keras.layers.Layer):
            return self.call(step, self.clone(step.layer))
        if step.layer is not None:  # a keras op of the float graph: stateless, called again
            return self.call(step, step.layer)
        if step.kind == "relu":
            return self.call(step, keras.layers.ReLU(max_value=step.info["max_value"] or None, name=self.unique(step.name)))
        if step.kind == "binary":  # swish's product
            return keras.layers.Multiply(name=self.unique(step.name))([self.tensors[key] for key in step.inputs])
        return self.call(step, keras.layers.Activation(step.info["activation"], name=self.unique(step.name)))

    def run(self, name):
        self.new_inputs = []
        for step in self.graph.steps:
            if step.absorbed:
                continue
            outputs = self.step(step)
            final = step.chain[-1] if step.chain else step
            if final.quantized:
                outputs = self.quantize_output(step, final, outputs)
            elif step.kind == "fixed":
                outputs = self.fixed_range(step, outputs)
            self.tensors[final.output] = outputs
        outputs = [self.tensors[key] for key in self.graph.outputs]
        inputs = self.new_inputs[0] if len(self.new_inputs) == 1 else self.new_inputs
        model = keras.Model(inputs, outputs[0] if len(outputs) == 1 else outputs, name=name)
        for copy, original in self.copies:
            copy.set_weights(original.get_weights())
        for wrapper in self.wrappers:
            wrapper.set_mask()
        return model


def build(graph, preserve_sparsity, enabled, ema_decay, name="qat"):
    """Returns the quantization-aware model of `graph`, with the float model's weights.

    Args:
        graph: a `keras3_graph.Plan` with nothing unsupported.
        preserve_sparsity: mask each kernel by its zeros (prune-preserving QAT).
        enabled: False builds the model with every fake quantization off.
        ema_decay: the activation ranges' moving-average decay.
        name: the new model's name.

    Returns:
        A new, uncompiled `keras.Model`.

    Example:

    ```python
    qat_model = build(plan(model), preserve_sparsity=True, enabled=True, ema_decay=0.999)
    ```
    """
    return _Builder(graph, preserve_sparsity, enabled, ema_decay).run(name)
