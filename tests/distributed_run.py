"""Trains small models with SDLM, ESGD, HessianFree and KFAC, saves the weights: a test worker.

Usage: python distributed_run.py OUTPUT {single,mirrored,multiworker,refusals}. The multi-worker
mode reads TF_CONFIG; the mirrored and refusals modes split the CPU into two logical devices.
The refusals mode writes, as JSON, the errors of the optimizers that cannot take curvature
through a synchronized BatchNormalization across replicas.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_secondorder as ks  # noqa: E402

GLOBAL_BATCH = 16


def train_loop(model, strategy, data, epochs):
    """`model.train_step` over the distributed dataset; each epoch's mean loss, as fit logs."""
    step = tf.function(lambda batch: strategy.run(model.train_step, args=(batch,)))
    losses = []
    for _ in range(epochs):
        model.reset_metrics()
        for batch in strategy.experimental_distribute_dataset(data):
            logs = step(batch)
        losses.append(float(strategy.experimental_local_results(logs["loss"])[0]))
    return losses


def synchronized_batch_norm_net():
    """A conv net with BatchNormalization over the global batch (moments all-reduced)."""
    return ks.wrap(keras.Sequential([
        keras.Input((6, 6, 2)), keras.layers.Conv2D(4, 3),
        keras.layers.BatchNormalization(synchronized=True, name="global_moments"),
        keras.layers.Activation("tanh"),
        keras.layers.Flatten(), keras.layers.Dense(3, activation="softmax")]))


def images(rng):
    x = rng.normal(size=(64, 6, 6, 2))
    return tf.data.Dataset.from_tensor_slices((x, rng.integers(0, 3, 64).astype("float64")))


def refusals(strategy, output):
    errors = {}
    for name, optimizer in (("sdlm", lambda: ks.optimizers.SDLM(0.05, diagonal="ggn")),
                            ("hf", lambda: ks.optimizers.HessianFree(curvature_fraction=1.0))):
        with strategy.scope():
            model = synchronized_batch_norm_net()
            model.compile(optimizer(), "sparse_categorical_crossentropy")
        try:
            model.fit(images(np.random.default_rng(0)).batch(GLOBAL_BATCH), verbose=0)
        except ValueError as error:
            errors[name] = str(error)
    with open(output, "w") as file:
        json.dump(errors, file)


def main(output, mode):
    if mode in ("mirrored", "refusals"):
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    elif mode == "multiworker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()
    if mode == "refusals":
        return refusals(strategy, output)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = rng.integers(0, 3, 64).astype("float32")  # MWMS reduces a sample batch: floats.
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    data = data.with_options(options)
    results = {}
    optimizers = {
        "sdlm": lambda: ks.optimizers.SDLM(0.05, curvature_samples=32, reestimate_every=3,
                                           weight_decay=0.01),
        "esgd": lambda: ks.optimizers.EquilibratedSGD(0.05, update_every=2, momentum=0.5,
                                                      damping=0.01),
        # The whole batch for curvature: a fraction takes the head of each replica's share.
        "hf": lambda: ks.optimizers.HessianFree(damping=1.0, curvature_fraction=1.0),
        # Factors and products summed over replicas; the adaptive step's 2x2 solve and the
        # damping's rho on every replica alike. The exact Fisher: sampled labels are drawn per
        # replica's share of the batch, so they differ from one device's draw.
        "kfac": lambda: ks.optimizers.KFAC(damping_period=2, inverse_update_period=3,
                                           fisher="exact"),
    }
    if mode == "multiworker":  # HessianFree runs on one machine's replicas only.
        del optimizers["hf"]
    for name, make in optimizers.items():
        # HessianFree and KFAC in float64: CG and the factors' inverses amplify float32
        # rounding (a different summation order across devices) beyond the comparison's
        # tolerance; float64 shows the method's equality.
        keras.config.set_floatx("float64" if name in ("hf", "kfac") else "float32")
        keras.config.set_dtype_policy(keras.config.floatx())
        with strategy.scope():
            keras.utils.set_random_seed(1)
            model = ks.wrap(keras.Sequential([
                keras.Input((6,)), keras.layers.Dense(8, activation="tanh"),
                keras.layers.Dense(3, activation="softmax",
                                   kernel_regularizer=keras.regularizers.L2(0.01))]))
            model.compile(make(), "sparse_categorical_crossentropy")
        if mode == "multiworker":
            # Keras 3's fit does not run under MultiWorkerMirroredStrategy (keras-team/keras
            # #20585: it fails before the first step); the same train step runs in a loop.
            losses = train_loop(model, strategy, data, epochs=2)
        else:
            losses = model.fit(data, epochs=2, verbose=0).history["loss"]
        for index, weight in enumerate(model.get_weights()):
            results[f"{name}_{index}"] = weight
        results[f"{name}_loss"] = np.array(losses, dtype=keras.config.floatx())
    if mode != "multiworker":
        # Training-mode BatchNormalization over the global batch: each replica's Hessian
        # products all-reduce the moments inside the forward pass (ESGD computes them on every
        # step for that), in float64 so that the comparison is of the method, not of rounding.
        keras.config.set_floatx("float64")
        keras.config.set_dtype_policy("float64")
        with strategy.scope():
            keras.utils.set_random_seed(1)
            model = synchronized_batch_norm_net()
            model.compile(ks.optimizers.EquilibratedSGD(0.05, update_every=2, damping=0.01),
                          "sparse_categorical_crossentropy")
        history = model.fit(images(rng).batch(GLOBAL_BATCH).with_options(options), epochs=2,
                            verbose=0).history
        for index, weight in enumerate(model.get_weights()):  # BatchNorm's moving moments too.
            results[f"bn_esgd_{index}"] = weight
        results["bn_esgd_loss"] = np.array(history["loss"], dtype="float64")
    np.savez(output, **results)


if __name__ == "__main__":
    main(*sys.argv[1:])
