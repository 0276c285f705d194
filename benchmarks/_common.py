"""Shared pieces of the benchmark scripts: timing, MNIST batches, writing results."""

import json
import os
import pathlib
import platform
import statistics
import time

import keras
import numpy as np
import tensorflow as tf

from keras_secondorder.datasets import mnist

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


class EpochTimer(keras.callbacks.Callback):
    """Wall time of every epoch."""

    def on_train_begin(self, logs=None):
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self.start)


def interleaved_times(functions, runs, warmup):
    """Wall times (seconds) of each function's runs, run round-robin so load drifts hit all."""
    for function in functions.values():
        for _ in range(warmup):
            function()
    times = {name: [] for name in functions}
    for _ in range(runs):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return times


def interleaved_medians(functions, runs, warmup):
    """Median wall time (seconds) of each function, run round-robin so load drifts hit all."""
    times = interleaved_times(functions, runs, warmup)
    return {name: statistics.median(values) for name, values in times.items()}


def per_model(make):
    """`model -> make(model)`, made once for the latest model (a `tf.function` traced once)."""
    made = {}

    def get(model):
        if model not in made:
            made.clear()
            made[model] = make(model)
        return made[model]

    return get


def mnist_batch(size, padded=False, data_dir=None):
    """The first `size` MNIST training images in [0, 1] (flat, or padded to 32x32) and labels."""
    (x_train, y_train), _ = mnist(data_dir)
    images = x_train[:size].astype("float32") / 255.0
    if padded:
        images = np.pad(images, ((0, 0), (2, 2), (2, 2)))[..., None]
    else:
        images = images.reshape(size, -1)
    return tf.constant(images), tf.constant(y_train[:size].astype("int32"))


def environment():
    return {
        "tensorflow": tf.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
    }


def write(name, payload, markdown):
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown)
    print(markdown)
