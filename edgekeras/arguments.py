"""Argument checks that every layer shares, with edgekeras' message form (no TensorFlow).

A check raises `ValueError("Argument `x` must be ... Received: x=...")`, the
form the library's messages (and the tests that match on them) use. It sits
below every package so that the device-side `runtime` (no TensorFlow) and the
training side check the same way.

Example:

```python
from edgekeras.arguments import check_positive_int

check_positive_int(32, "batch_size")  # passes; 0, 2.5 or True raise ValueError
check_positive_int(None, "max_examples", allow_none=True)  # passes
```
"""

import numbers

__all__ = ["check_positive_int"]


def check_positive_int(value, argument, *, allow_none=False):
    """Raises ValueError unless `value` is an integer > 0 (or None when `allow_none`).

    A bool is no integer here (`True` as a count is a mistake); numpy
    integers are.

    Args:
        value: the argument's value.
        argument: its name, as the caller's signature spells it.
        allow_none: whether None (the caller's "not set") passes.

    Raises:
        ValueError: "Argument `argument` must be a positive integer[ or
            None]. Received: argument=value".

    Example:

    ```python
    check_positive_int(0, "verify_examples")  # ValueError
    ```
    """
    if allow_none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        allowed = "a positive integer or None" if allow_none else "a positive integer"
        raise ValueError(f"Argument `{argument}` must be {allowed}. Received: {argument}={value!r}")
