"""The objective `model.fit` minimizes on a batch, as a pure function of the trainable weights."""

import collections
import copy

import keras
import tensorflow as tf

# CompileLoss: Keras's own resolution of a `loss` argument (strings, functions, Loss objects,
# loss weights), the object `model.compile(loss=...)` builds, so that an explicit `loss=` means
# the same here.
from keras_secondorder._keras_compat import (
    CompileLoss,
    aggregate_additional_loss,
    call_has_training_arg,
    compile_loss,
    layers_in_variable_dtype,
    losses_override,
    twice_differentiable_moments,
)
from keras_secondorder.curvature import output_losses, vectors

Batch = collections.namedtuple("Batch", ["x", "y", "sample_weight"], defaults=[None])
Batch.__doc__ = "One batch of data: inputs `x`, targets `y` and optional `sample_weight`."



def as_batch(data, name="data"):
    """Converts `(x, y)`, `(x, y, sample_weight)` or a `Batch` into a `Batch` of tensors."""
    if not isinstance(data, tuple) or len(data) not in (2, 3):
        raise ValueError(
            f"`{name}` must be a tuple (x, y) or (x, y, sample_weight); received "
            f"{type(data).__name__}{f' of length {len(data)}' if isinstance(data, tuple) else ''}."
            " Pass the batch as a tuple, or a tf.data.Dataset of such tuples."
        )
    batch = Batch(*(None if part is None else tf.nest.map_structure(tf.convert_to_tensor, part)
                    for part in data))
    if tf.nest.flatten(batch.x)[0].shape.rank and tf.nest.flatten(batch.x)[0].shape[0] == 0:
        raise ValueError(
            f"`{name}` holds no examples (its inputs have shape "
            f"{tf.nest.flatten(batch.x)[0].shape}); the curvature of an empty batch is not "
            "defined. Pass at least one example."
        )
    return batch


def as_batches(data):
    """A list of `Batch`es from one batch tuple, a `tf.data.Dataset` or an iterable of batches.

    A tuple is one batch; anything else iterable (a dataset, a list, a generator) is a sequence
    of batches, read once here so that an operator built on it is one fixed matrix.
    """
    if isinstance(data, tuple):
        return [as_batch(data)]
    if isinstance(data, (dict, str)) or not hasattr(data, "__iter__"):
        raise ValueError(
            f"`data` must be a batch tuple (x, y[, sample_weight]), a tf.data.Dataset or an "
            f"iterable of such tuples; received {type(data).__name__}."
        )
    batches = [as_batch(batch, name="each element of `data`") for batch in data]
    if not batches:
        raise ValueError("`data` holds no batch. Pass at least one (x, y) batch.")
    return batches


def batch_size(batch):
    """The number of examples in a batch (leading dimension of its first input)."""
    return tf.shape(tf.nest.flatten(batch.x)[0])[0]


def batch_weights(batches, dtype):
    """`n_b / sum(n)` for each batch: the weights of a size-weighted mean over the batches."""
    sizes = tf.cast(tf.stack([batch_size(batch) for batch in batches]), dtype)
    return tf.unstack(sizes / tf.reduce_sum(sizes))


class Objective:
    """What `model.fit` minimizes on a batch, as a pure function of the trainable weights.

    `L(w) = compute_loss(x, y, f(x; w), sample_weight) = loss_weight * reduce_i(sample_weight_i *
    loss(y_i, f(x_i; w))) + sum(model.losses)`, exactly as Keras's train step computes it
    (reduction, sample weights, loss weights, kernel/activity regularizers, a subclass's own
    `compute_loss`).

    It is evaluated with `model.stateless_call` and `model.stateless_compute_loss`, so nothing is
    ever assigned to the model's variables: BatchNorm moving statistics and the dropout seed state
    stay as they are. Dropout masks are drawn from the current seed state (or the one pinned by
    `pin_state`), so every evaluation sees the same masks; this makes products in training mode
    one fixed, symmetric matrix and makes finite differences of gradients agree with exact
    products.

    Args:
        model: a built Keras model.
        loss: the loss to use instead of the compiled one: anything `model.compile(loss=...)`
            accepts. Defaults to `None`: the compiled loss (and the model's `compute_loss`).
        variables: the trainable variables the curvature is taken over, e.g. one layer's, for a
            diagonal block. Defaults to `None`: all of `model.trainable_variables`.
        training: whether layers run in training mode (BatchNorm batch statistics, Dropout on).
            Defaults to `False`: the model as it predicts, a deterministic objective. The
            optimizers pass `True`, so that curvature matches the step's gradient.
    """

    def __init__(self, model, loss=None, variables=None, training=False):
        if not isinstance(model, keras.Model):
            raise ValueError(f"`model` must be a keras.Model; received {type(model).__name__}.")
        if not model.built or not model.trainable_variables:
            raise ValueError(
                f"`model` ({model.name}) has no trainable variables yet. Build it first: call it "
                "on a batch, or construct it from keras.Input."
            )
        self.model = model
        self.training = bool(training)
        self._explicit_loss = None if loss is None else CompileLoss(loss)
        if loss is None and compile_loss(model) is None and not overrides(
            model, "compute_loss"
        ):
            raise ValueError(
                f"`loss` is None and model {model.name!r} was not compiled with a loss. Call "
                "model.compile(loss=...) first or pass loss=... here."
            )
        trainable = model.trainable_variables
        if variables is None:
            variables = trainable
        positions = {id(variable): index for index, variable in enumerate(trainable)}
        missing = [variable.path for variable in variables if id(variable) not in positions]
        if missing or not variables:
            raise ValueError(
                f"`variables` must be a non-empty list of the model's trainable variables; "
                f"{missing or 'an empty list'} {'are' if len(missing) > 1 else 'is'} not. Pick "
                "them from model.trainable_variables (e.g. model.layers[i].trainable_variables)."
            )
        self.variables = list(variables)
        self._positions = [positions[id(variable)] for variable in self.variables]
        self.dtype = tf.as_dtype(self.variables[0].dtype)
        self._state = None  # The non-trainable values, once pinned (`pin_state`).

    @property
    def shapes(self):
        """The shapes of the variables the curvature is taken over."""
        return [tuple(variable.shape) for variable in self.variables]

    @property
    def num_parameters(self):
        """The number of scalar parameters the curvature is taken over."""
        return sum(tf.TensorShape(variable.shape).num_elements() for variable in self.variables)

    def restricted(self, variables):
        """The same objective with the curvature taken over `variables` (a subset) only."""
        restricted = copy.copy(self)
        positions = {id(v): p for v, p in zip(self.variables, self._positions, strict=True)}
        restricted.variables = list(variables)
        restricted._positions = [positions[id(v)] for v in variables]
        return restricted

    def params(self):
        """The current values of `variables`, as the list of tensors products are taken at."""
        return [tf.convert_to_tensor(variable.value) for variable in self.variables]

    def check_vector(self, vector, name="vector"):
        """`vector` as a list of tensors shaped like `variables` (ValueError otherwise)."""
        return vectors.check_like(vector, self.variables, name=name)

    def forward(self, params, x):
        """`(y_pred, losses)`: the model's outputs and `model.losses` at weights `params`."""
        kwargs = {"training": self.training} if call_has_training_arg(self.model) else {}
        # Exact second derivatives through BatchNorm's batch statistics (see
        # `twice_differentiable_moments`, which the finite-difference test found); curvature of
        # mixed-precision layers in float32, where squared first derivatives and products of
        # second derivatives do not underflow or overflow as in float16.
        with twice_differentiable_moments(), layers_in_variable_dtype(self.model):
            y_pred, _, losses = self.model.stateless_call(
                self._trainable_values(params), self._non_trainable_values(), x,
                return_losses=True, **kwargs
            )
        return y_pred, losses

    def regularization(self, losses):
        """`sum(model.losses)` aggregated as Keras does, or `None` when there are none."""
        if not losses:
            return None
        return tf.add_n([aggregate_additional_loss(self.model, loss) for loss in losses])

    def value(self, params, batch):
        """The objective at weights `params` on `batch` (a scalar tensor)."""
        y_pred, losses = self.forward(params, batch.x)
        return self.value_from_predictions(params, batch, y_pred, losses)

    def value_from_predictions(self, params, batch, y_pred, losses):
        """The objective given the forward pass `(y_pred, losses)` made at `params`."""
        if self._explicit_loss is not None:
            value = self._explicit_loss(batch.y, y_pred, batch.sample_weight)
            regularization = self.regularization(losses)
            return value if regularization is None else value + regularization
        model = self.model
        # As Keras's own stateless (JAX) train step: the forward pass's losses are handed to
        # compute_loss as model.losses, so activity regularizers are counted too.
        with losses_override(model, losses):
            value, _ = model.stateless_compute_loss(
                self._trainable_values(params),
                self._non_trainable_values(),
                [variable.value for variable in model.metrics_variables],
                x=batch.x,
                y=batch.y,
                y_pred=y_pred,
                sample_weight=batch.sample_weight,
                training=self.training,
            )
        return value

    def gradient(self, params, batch):
        """`(value, gradient)` of the objective at `params` on `batch`."""
        with tf.GradientTape() as tape:
            tape.watch(params)
            value = self.value(params, batch)
        return value, vectors.dense_gradient(tape, value, params)

    def output_loss(self, batch, y_pred):
        """The matching loss in output space, where the Gauss-Newton matrix splits the objective.

        Raises:
            ValueError: the loss has no Gauss-Newton split here (lists the supported losses).
        """
        if self._explicit_loss is None and overrides(self.model, "compute_loss"):
            raise ValueError(
                f"{type(self.model).__name__} overrides compute_loss, so its objective cannot be "
                "split into network and loss for the Gauss-Newton or Fisher matrix. Pass the loss "
                "explicitly (loss=...), or use the Hessian, which works for any objective."
            )
        return output_losses.resolve(self._explicit_loss or compile_loss(self.model), batch.y,
                                     y_pred)

    def check_split(self, batch):
        """Raises the `output_loss` error now, eagerly, if `batch`'s objective has no split.

        Operators and callbacks of the Gauss-Newton and Fisher matrices call it when they are
        made, so that a multi-output model or an unsupported loss is refused there, not an
        epoch later inside a traced product.
        """
        y_pred, _ = self.forward(self.params(), batch.x)
        self.output_loss(batch, y_pred).split(y_pred)

    def _trainable_values(self, params):
        """All trainable values, with `params` in place of `variables`' current values."""
        values = [variable.value for variable in self.model.trainable_variables]
        for position, value in zip(self._positions, params, strict=True):
            values[position] = value
        return values

    def pin_state(self):
        """Evaluates from now on with the non-trainable values as they are here.

        The dropout seed state and BatchNorm moving statistics are read now: a train step
        pins them before its forward pass advances them, so that the curvature is taken with
        the dropout masks its gradient was taken with.
        """
        self._state = [tf.convert_to_tensor(variable.value)
                       for variable in self.model.non_trainable_variables]

    def _non_trainable_values(self):
        if self._state is not None:
            return self._state
        return [variable.value for variable in self.model.non_trainable_variables]


def overrides(model, method):
    """Whether `model`'s class overrides the `keras.Model` method named `method`."""
    return getattr(type(model), method) is not getattr(keras.Model, method)


def as_objective(model, loss=None, variables=None, training=None):
    """`model` itself if it is an `Objective`, else `Objective(model, loss, variables, training)`.

    Raises:
        ValueError: an `Objective` was given together with `loss`, `variables` or `training`.
    """
    if isinstance(model, Objective):
        given = [name for name, value in (("loss", loss), ("variables", variables),
                                          ("training", training)) if value is not None]
        if given:
            raise ValueError(
                f"{', '.join(given)} cannot be given with an Objective, which already fixes them. "
                "Pass the keras.Model instead, or build the Objective with these settings."
            )
        return model
    return Objective(model, loss=loss, variables=variables, training=bool(training))
