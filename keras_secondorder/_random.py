"""Counter-based random draws that are identical in eager, graph and XLA-compiled code.

TensorFlow's stateless random ops give different numbers under `jit_compile=True` than in graph
mode when the seed is computed at run time (tensorflow/tensorflow#117644; with a constant seed
the draw is folded on the host and agrees, which hides it). Curvature probes are seeded by the
step number, so a run, its XLA-compiled twin and a resumed run would draw differently. These
draws hash `(seed, element index)` with integer arithmetic that every backend computes alike.
"""

import math

import tensorflow as tf

_MASK = 0xFFFFFFFF
# Odd multipliers below 2^31: a 32-bit value times one fits int64 without overflow.
_MULTIPLIERS = (0x7FEB352D, 0x68E31DA5, 0x2C1B3C6D)


def _hash(x):
    """A 32-bit avalanche hash (xorshift-multiply rounds) of non-negative int64 values."""
    for multiplier in _MULTIPLIERS:
        x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))
        x = tf.bitwise.bitwise_and(x * multiplier, _MASK)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))


def _bits(shape, seed, stream=0):
    """32 random bits (in int64) per element of `shape`, from the pair `seed` and a stream."""
    seed = tf.bitwise.bitwise_and(tf.cast(seed, tf.int64), _MASK)
    key = _hash(_hash(seed[0] + stream * 0x9E3779B) + seed[1])
    index = tf.range(tf.reduce_prod(tf.cast(shape, tf.int64)), dtype=tf.int64)
    return tf.reshape(_hash(tf.bitwise.bitwise_xor(_hash(index), key)), shape)


def uniform(shape, seed, dtype=tf.float32):
    """Uniform draws in the open interval (0, 1)."""
    return tf.cast((tf.cast(_bits(shape, seed), tf.float64) + 0.5) / 2.0**32, dtype)


def normal(shape, seed, dtype=tf.float32):
    """Standard normal draws (Box-Muller)."""
    radius = tf.sqrt(-2.0 * tf.math.log(uniform(shape, seed, tf.float64)))
    angle = 2.0 * math.pi * tf.cast((tf.cast(_bits(shape, seed, stream=1), tf.float64) + 0.5)
                                    / 2.0**32, tf.float64)
    return tf.cast(radius * tf.cos(angle), dtype)


def rademacher(shape, seed, dtype=tf.float32):
    """Draws of +1 or -1 with equal probability."""
    sign_bit = tf.bitwise.right_shift(_bits(shape, seed), 31)
    return tf.cast(2 * sign_bit - 1, dtype)
