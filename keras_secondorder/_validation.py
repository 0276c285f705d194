"""Checks of settings, with errors that name the parameter, the value received and what fits.

Numbers may be Python or NumPy scalars (`np.float32(0.1)`, `np.int64(3)`); they are returned
as Python `float` and `int`, so that configs stay JSON-serializable.
"""

import math
import numbers

import tensorflow as tf

# Checks run in Python while a step is traced: autograph must leave them as they are.
_python_only = tf.autograph.experimental.do_not_convert


@_python_only
def _is_integer(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@_python_only
def positive_int(value, name):
    """`int(value)` if it is a positive integer, else a ValueError naming `name`."""
    if not _is_integer(value) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer; received {value!r}.")
    return int(value)


@_python_only
def one_of(value, name, choices):
    """`value` if it is one of `choices`, else a ValueError naming `name` and listing them."""
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}; received {value!r}.")
    return value


@_python_only
def number(value, name, accepts, description):
    """`float(value)` if it is a finite real number that `accepts`, else a ValueError.

    `description` completes "must be a number ...", e.g. `">= 0"` or `"in (0, 1]"`.
    """
    if (not isinstance(value, numbers.Real) or isinstance(value, bool)
            or not math.isfinite(value) or not accepts(value)):
        raise ValueError(f"`{name}` must be a number {description}; received {value!r}.")
    return float(value)


@_python_only
def integer(value, name):
    """`int(value)` if it is an integer (any sign), else a ValueError naming `name`."""
    if not _is_integer(value):
        raise ValueError(f"`{name}` must be an integer; received {value!r}.")
    return int(value)


@_python_only
def learning_rate(value, name="learning_rate"):
    """A finite number >= 0 as a float (0 freezes the weights), or a schedule or callable."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return number(value, name, lambda v: v >= 0,
                      ">= 0 (a negative rate climbs the loss), or a LearningRateSchedule")
    if not callable(value):
        raise ValueError(f"`{name}` must be a number >= 0, a keras.optimizers.schedules."
                         f"LearningRateSchedule or a callable; received {value!r}.")
    return value
