"""Trains a small model with SDLM, ESGD and HessianFree, saves the weights: a test worker.

Usage: python distributed_run.py OUTPUT {single,mirrored,multiworker}. The multi-worker mode reads
TF_CONFIG; the mirrored mode splits the CPU into two logical devices.
"""

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


def main(output, mode):
    if mode == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    elif mode == "multiworker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()
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
    }
    if mode == "multiworker":  # HessianFree runs on one machine's replicas only.
        del optimizers["hf"]
    for name, make in optimizers.items():
        # HessianFree in float64: CG amplifies float32 rounding (a different summation order
        # across devices) beyond the comparison's tolerance; float64 shows the method's equality.
        keras.config.set_floatx("float64" if name == "hf" else "float32")
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
    np.savez(output, **results)


if __name__ == "__main__":
    main(*sys.argv[1:])
