"""Progress on long curvature work: a Keras progress bar that appears once work takes a while."""

import sys
import time

import keras
import tensorflow as tf

from keras_secondorder._validation import one_of

VERBOSE = ("auto", 0, 1, 2, False, True)
DELAY = 2.0  # Seconds of work before a bar appears: short work prints nothing.


def interactive():
    """Whether output goes to a person: a terminal or a notebook (Keras's `"auto"` rule)."""
    return sys.stdout.isatty() or "ipykernel" in sys.modules


class Progress:
    """Counts units of work against a planned total, with a Keras progress bar (and time left).

    The bar appears once the work has run `delay` seconds, so short work prints nothing, and
    `finish` ends it on its own line at the units done (iterative methods may stop short of
    the plan), so the next message does not land on the bar's line.

    Args:
        total: the units planned (an upper bound).
        unit: what a unit is, e.g. `"products"`.
        verbose: `"auto"` (a bar in interactive use: a terminal or a notebook), `1` / `2` /
            `True` or `0` / `False`. Defaults to `"auto"`.
        delay: seconds of work before the bar appears. Defaults to `None`: `DELAY`.
    """

    def __init__(self, total, unit, verbose="auto", delay=None):
        one_of(verbose, "verbose", VERBOSE)
        self.total, self.unit = max(int(total), 1), unit
        self.delay = DELAY if delay is None else delay
        self.show = interactive() if verbose == "auto" else bool(verbose)
        self.done, self.bar = 0, None
        self._start = time.time()

    def add(self, count=1):
        """`count` more units done."""
        self.done += count
        if not self.show:
            return
        if self.bar is None and time.time() - self._start >= self.delay:
            self.bar = keras.utils.Progbar(max(self.total, self.done), unit_name=self.unit)
            self.bar._start = self._start  # The time left counts from the work's start.
        if self.bar is not None:
            self.bar.update(min(self.done, self.bar.target))

    def finish(self):
        """Ends the bar (if shown) at the units done."""
        if self.bar is not None:
            self.bar.target = max(self.done, 1)
            self.bar.update(self.bar.target, finalize=True)


class ProgressOperator(tf.linalg.LinearOperator):
    """Wraps an operator and adds one unit to a `Progress` (if any) at each product (counted)."""

    def __init__(self, operator, progress=None):
        self.operator, self.progress, self.num_products = operator, progress, 0
        super().__init__(dtype=operator.dtype, is_self_adjoint=True, is_square=True,
                         name=operator.name)

    def _shape(self):
        return self.operator.shape

    def _shape_tensor(self):
        return self.operator.shape_tensor()

    def _matvec(self, x, adjoint=False):
        self.num_products += 1
        if self.progress is not None:
            self.progress.add(1)
        return self.operator.matvec(x)

    def _matmul(self, x, adjoint=False, adjoint_arg=False):
        # Imported here: curvature imports this module (diagonal's progress) as it loads.
        from keras_secondorder.curvature.operator import matmul_by_columns

        del adjoint  # Self-adjoint.
        return matmul_by_columns(self, x, adjoint_arg)


def counted(operator, planned, verbose, unit):
    """`(operator with progress, progress)` for a function making up to `planned` products."""
    progress = Progress(planned, unit, verbose)
    return ProgressOperator(operator, progress), progress
