"""What the Keras 3 path computes without TensorFlow equals what the tf_keras path computes with it.

The Keras 3 callbacks read the schedule in plain Python (`schedule_at`) and
compute masks with numpy (`*_mask_arrays`); tf_keras' graph uses TFMOT's
tensors. Both must prune the same weights.
"""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_optimization as tfmot

from edgekeras import schedules, sparsity

SCHEDULES = {
    "polynomial_cubic": lambda: schedules.PolynomialDecay(0.0, 0.75, begin_step=0, end_step=12, frequency=2),
    "polynomial_fractional": lambda: schedules.PolynomialDecay(0.1, 0.83, begin_step=5, end_step=303, power=2.5, frequency=7),
    "polynomial_linear": lambda: schedules.PolynomialDecay(0.2, 0.9, begin_step=3, end_step=40, power=1, frequency=3),
    "constant": lambda: schedules.ConstantSparsity(0.6, begin_step=3, end_step=50, frequency=4),
    "constant_endless": lambda: schedules.ConstantSparsity(0.3, begin_step=0, frequency=5),
    "m_by_n": lambda: schedules.MbyNSparsity((1, 4), begin_step=2, frequency=3),
}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_at_equals_the_tensor_schedule_bit_for_bit(name):
    schedule = SCHEDULES[name]()
    for step in range(0, 320):
        should_prune, value = schedule(tf.constant(step, tf.int64))
        assert schedules.schedule_at(schedule, step) == (bool(should_prune), float(value)), step


def test_schedule_at_calls_a_foreign_schedule_eagerly():
    schedule = tfmot.sparsity.keras.PolynomialDecay(0.1, 0.5, begin_step=2, end_step=10, frequency=2)
    assert schedules.schedule_at(schedule, 4) == (True, pytest.approx(0.5 - 0.4 * 0.75**3))
    assert schedules.schedule_at(schedule, 5)[0] is False


def _arrays(shape, ties, seed):
    rng = np.random.default_rng(seed)
    array = rng.normal(size=shape).astype(np.float32)
    if ties:  # already-pruned weights: many exact zeros, and repeated values
        array[rng.random(shape) < 0.6] = 0.0
        array[rng.random(shape) < 0.2] = 0.5
    return array


SHAPES = [(3, 3, 8, 16), (1, 1, 6, 5), (10, 7), (12, 8), (3, 3, 5, 2)]


@pytest.mark.parametrize("ties", [False, True], ids=["random", "ties"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_numpy_masks_equal_the_tensor_masks(shape, ties):
    array = _arrays(shape, ties, seed=len(shape) + shape[-1])
    for m_by_n in ((2, 4), (1, 4), (3, 8)):
        expected = sparsity.m_by_n_mask(tf.constant(array), m_by_n).numpy()
        got = sparsity.m_by_n_mask_array(array, m_by_n)
        assert got.dtype == array.dtype and got.shape == array.shape
        np.testing.assert_array_equal(got, expected, err_msg=str(m_by_n))
    for target in (0.0, 0.3, 0.75):
        value = float(np.float32(target))
        expected = sparsity.magnitude_masks([tf.constant(array)], tf.constant(target, tf.float32))[0].numpy()
        np.testing.assert_array_equal(sparsity.magnitude_mask_arrays([array], value)[0], expected)


@pytest.mark.parametrize("bound", [None, 0.8])
def test_numpy_global_masks_equal_the_tensor_masks(bound):
    arrays = [_arrays(shape, ties=False, seed=index) for index, shape in enumerate(SHAPES)]
    expected = sparsity.global_magnitude_masks([tf.constant(a) for a in arrays], tf.constant(0.7, tf.float32), bound)
    got = sparsity.global_magnitude_mask_arrays(arrays, float(np.float32(0.7)), bound)
    for mask, reference in zip(got, expected):
        np.testing.assert_array_equal(mask, reference.numpy())


def test_m_by_n_mask_array_refuses_other_ranks():
    with pytest.raises(ValueError, match=r"m-by-n sparsity needs a rank 2 or 4 weight. Received shape \(3, 3, 4\)"):
        sparsity.m_by_n_mask_array(np.ones((3, 3, 4), np.float32))
