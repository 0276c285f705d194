"""tf.data's autotuner against fixed parallelism, for a pipeline in `model.fit` on two CPU cores.

The usual user pipeline (`shuffle`, `batch`, `map(num_parallel_calls=AUTOTUNE)`,
`prefetch(AUTOTUNE)`; `mnist_dataset`'s, with the autotuner switched back on) feeds LeNet-5 at
batch 64 for `--epochs` epochs of the 60,000 MNIST training images: Keras's own model with SGD,
the same model wrapped (`keras_secondorder.wrap`) with SGD, and wrapped with SDLM (its diagonal
re-estimated every epoch, as in `make demo`), each with `options.autotune.enabled` on and off.
Every epoch's wall time and the wait between its start and its first step are recorded; the
first epoch (tracing) is left out of the medians. Runs are interleaved over `--repeats`.
Writes benchmarks/results/tfdata_autotune.{json,md}.

Run alone on the machine: python benchmarks/tfdata_autotune.py [--epochs 3] [--repeats 3]
"""

import argparse
import statistics
import time

import keras
import tensorflow as tf
from _common import EpochTimer, environment, write

import keras_secondorder as ks
from keras_secondorder import models
from keras_secondorder.datasets import mnist_dataset

STEPS_PER_EPOCH = 938  # 60,000 images at batch 64.
OPTIMIZERS = {
    "Keras model, SGD": (False, lambda: keras.optimizers.SGD(1e-3)),
    "wrapped, SGD": (True, lambda: keras.optimizers.SGD(1e-3)),
    "wrapped, SDLM": (True, lambda: ks.optimizers.SDLM(
        1e-3, mu=0.05, reestimate_every=STEPS_PER_EPOCH, weight_decay=1e-2)),
}


class EpochStartTimer(EpochTimer):
    """Each epoch's wall time, and the wait from its start to its first step."""

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.waits = []

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 0:
            self.waits.append(time.perf_counter() - self.start)


def run(wrapped, make_optimizer, autotune, epochs):
    options = tf.data.Options()
    options.autotune.enabled = autotune
    train = mnist_dataset("train", 64, seed=0).with_options(options)
    keras.utils.set_random_seed(0)
    model = ks.wrap(models.lenet5()) if wrapped else models.lenet5()
    model.compile(make_optimizer(), "sparse_categorical_crossentropy", steps_per_execution=32)
    timer = EpochStartTimer()
    model.fit(train, epochs=epochs, verbose=0, shuffle=False, callbacks=[timer])
    return {"epoch_seconds": timer.times, "first_step_wait_seconds": timer.waits}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    runs = {(name, autotune): [] for name in OPTIMIZERS for autotune in (True, False)}
    for _ in range(args.repeats):
        for (name, autotune), results in runs.items():
            results.append(run(*OPTIMIZERS[name], autotune, args.epochs))
            print(name, "autotune" if autotune else "fixed", results[-1], flush=True)
    rows, payload = [], []
    for (name, autotune), results in runs.items():
        later = [t for result in results for t in result["epoch_seconds"][1:]]
        waits = [w for result in results for w in result["first_step_wait_seconds"][1:]]
        summary = {"model": name, "autotune": autotune, "runs": results,
                   "median_epoch_seconds": statistics.median(later),
                   "max_first_step_wait_seconds": max(waits),
                   "epochs_held_over_1s": sum(wait > 1.0 for wait in waits),
                   "epochs": len(waits)}
        payload.append(summary)
        rows.append(f"| {name} | {'on' if autotune else 'off'} | "
                    f"{summary['median_epoch_seconds']:.2f} s "
                    f"({min(later):.2f}-{max(later):.2f}) | "
                    f"{summary['epochs_held_over_1s']} of {len(waits)} | "
                    f"{summary['max_first_step_wait_seconds']:.2f} s |")
    markdown = (
        "# tf.data's autotuner in `fit` on two CPU cores\n\n"
        f"LeNet-5, batch 64, 938 steps an epoch, `steps_per_execution=32`; epochs 2-{args.epochs} "
        f"of {args.repeats} interleaved runs per row; {environment()}.\n\n"
        "| model, optimizer | autotune | epoch: median (range) | epochs whose first step waited "
        "> 1 s | longest wait |\n| --- | --- | ---: | ---: | ---: |\n" + "\n".join(rows) + "\n")
    write("tfdata_autotune", {"environment": environment(), "epochs": args.epochs,
                              "repeats": args.repeats, "rows": payload}, markdown)


if __name__ == "__main__":
    main()
