"""The conditioning study: the lecture's tricks against the curvature, and where SDLM pays.

A 784-100-100-10 MLP and LeNet-5 (`--models`) on `--train` MNIST images, one factor changed at
a time from the baseline (standardized inputs, LeCun's scaled tanh, weight variance 1/fan_in,
no BatchNormalization, no skip connection):

- inputs: raw [0, 1] / centred / standardized (centred, divided by the global standard
  deviation);
- hidden units: sigmoid / scaled tanh / relu;
- initial weight variance: 0.1, 1 and 10 times 1/fan_in;
- BatchNormalization after each hidden Dense layer;
- a skip connection around the second hidden layer (a residual MLP).

LeNet-5 (`models.lenet5` on the images padded to 32x32) takes the rows that apply: the inputs,
the units (all of C1 to F6) and the initial variance (of every kernel; the subsampling
coefficients start at 1 as always).

For each configuration, at initialization and after one epoch of SGD (its best rate), the
Gauss-Newton matrix on `--curvature-examples` images: `λ_max`, `λ_max / λ_10` and
`λ_max / λ_100` (Lanczos), the bulk (the median of the spectral density) and, per layer,
`λ_max` and the mean diagonal (of the first `--diagonal-examples`; "second derivatives smaller
in lower layers"; every layer with weights). Then SGD (the rates of `SGD_RATES`) and SDLM (the
settings of `SDLM_SETTINGS`), batch 32, up to `--epochs` epochs: each one's epochs to the
training loss `--target` (the loss on the whole subset at the end of each epoch), the best of
each grid (seed 0; a grid whose best is its largest rate, or epsilon, grows past it: SGD's rate
times 3, SDLM's epsilon times 2.5 at the best's mu, up to twice), then both best settings again
with `--seeds - 1` more seeds (initial weights and batch order), and SDLM's speed-up over tuned
SGD: the ratio of the mean epochs, with its range over the seeds.

And the lecture's linear model `f(w) = E[(wᵀx - y)²] + λ|w|²`, whose Hessian is
`2 E[xxᵀ] + 2λ I`: its condition number against the norm of the inputs' mean (14x14 MNIST,
standardized, then shifted), measured (`spectrum.exact_eigenvalues` of the Keras model) and
in closed form (`eigvalsh` of `2 XᵀX / N + 2λ I`).

Writes benchmarks/results/conditioning.{json,md,png}.

`--small-mu` measures only SDLM with mu 1e-4 and 1e-6 on the sigmoid rows, whose lower layers'
curvature is far below the grid's smallest mu (results/conditioning_small_mu.{json,md}).

Each finished row goes to benchmarks/results/conditioning_rows.jsonl at once; `--resume` skips
the rows found there for the same settings.

Run: python benchmarks/conditioning.py [--models mlp lenet5] [--train 5000] [--epochs 15]
     [--seeds 3] [--processes 1] [--resume] [--small-mu] [--data DIR]
"""

import argparse
import functools
import json
import multiprocessing

import keras
import numpy as np
import tensorflow as tf
from _common import RESULTS, environment, write

import keras_secondorder as ks
from keras_secondorder import curvature, spectrum
from keras_secondorder.datasets import mnist
from keras_secondorder.models import lenet5
from keras_secondorder.models.lenet import scaled_tanh

SGD_RATES = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
SDLM_SETTINGS = ((0.005, 0.02), (0.02, 0.02), (0.002, 0.005), (0.01, 0.05), (0.02, 0.1))
SMALL_MU_SETTINGS = tuple((epsilon, mu) for mu in (1e-4, 1e-6) for epsilon in (0.002, 0.005, 0.02))
BASELINE = {"inputs": "standardized", "activation": "scaled_tanh", "init_scale": 1.0,
            "batch_norm": False, "skip": False}
CHANGES = [{}, {"inputs": "raw"}, {"inputs": "centred"}, {"activation": "sigmoid"},
           {"activation": "relu"}, {"init_scale": 0.1}, {"init_scale": 10.0},
           {"batch_norm": True}, {"skip": True}]
ACTIVATIONS = {"sigmoid": "sigmoid", "scaled_tanh": scaled_tanh, "relu": "relu"}
ROWS = RESULTS / "conditioning_rows.jsonl"


def inputs(images, kind):
    """`images` (flat, in [0, 1]) raw, centred per pixel, or centred and standardized."""
    if kind == "raw":
        return images
    centred = images - images.mean(axis=0)
    return centred if kind == "centred" else centred / centred.std()


def initializer(config):
    """The configuration's kernel initializer, a new object for every layer.

    One unseeded Keras initializer object draws the same values in every layer it builds, which
    made the MLP's layers copies of one stream until 2026-12-04.
    """
    return keras.initializers.VarianceScaling(config["init_scale"], "fan_in", "normal")


def mlp(config, seed):
    keras.utils.set_random_seed(seed)
    x = first = keras.Input((784,))
    for index in range(2):
        h = keras.layers.Dense(100, kernel_initializer=initializer(config),
                               name=f"hidden_{index}")(x)
        if config["batch_norm"]:
            h = keras.layers.BatchNormalization(name=f"batch_norm_{index}")(h)
        h = keras.layers.Activation(ACTIVATIONS[config["activation"]])(h)
        x = keras.layers.Add()([h, x]) if config["skip"] and index == 1 else h
    outputs = keras.layers.Dense(10, activation="softmax", kernel_initializer=initializer(config),
                                 name="output")(x)
    return ks.Model(first, outputs)


def lenet(config, seed):
    keras.utils.set_random_seed(seed)
    return ks.wrap(lenet5(activation=ACTIVATIONS[config["activation"]],
                          kernel_initializer=initializer(config)))


# Each model: its builder, its input shape, and the rows that apply to it.
MODELS = {"mlp": (mlp, (784,), CHANGES),
          "lenet5": (lenet, (32, 32, 1),
                     [c for c in CHANGES if "batch_norm" not in c and "skip" not in c])}


def curvature_proxies(model, batch, diagonal_examples):
    """The Gauss-Newton matrix's spectrum: λ_max, ratios to λ_10 and λ_100, bulk, per layer.

    In training mode, the objective SGD descends: BatchNormalization normalizes with the
    batch's statistics (its moving statistics at initialization would make it the identity).
    The bulk is the median of the density's non-zero part: on `n` examples the GGN has rank at
    most `9 n`, far below the parameter count, so the median of the whole density is zero.
    The mean diagonals are those of the first `diagonal_examples` examples' GGN: an average
    over examples, whose exact per-example computation is the study's costliest part (LeNet-5:
    42 s on 250 images, against 15 s for the 300 Lanczos steps on 1000).
    """
    operator = curvature.GGNOperator(model, batch, training=True)
    top = spectrum.lanczos(operator, k=100, num_iterations=300, which="largest", tol=1e-4,
                           verbose=0).largest.numpy()
    density = spectrum.spectral_density(operator, num_probes=4, num_iterations=60, verbose=0)
    nodes = np.asarray(density.nodes).ravel()
    weights = np.asarray(density.weights).ravel()
    nonzero = nodes > 1e-6 * top[0]
    nodes, weights = nodes[nonzero], weights[nonzero]
    order = np.argsort(nodes)
    cumulative = np.cumsum(weights[order]) / weights.sum()
    # The exact diagonal once for all the weights, split by layer below. With BatchNormalization
    # in training mode each example's gradient runs through the whole batch, so a chunk's
    # jacobian holds chunk x batch activations (10 GB for chunks of 64 on 1000 examples).
    chunk_size = 16 if any(isinstance(layer, keras.layers.BatchNormalization)
                           for layer in model.layers) else 64
    diagonal = curvature.diagonal(model, tuple(part[:diagonal_examples] for part in batch),
                                  "ggn", training=True, chunk_size=chunk_size, verbose=0)
    of_variable = {id(v): d.numpy().ravel()
                   for v, d in zip(model.trainable_variables, diagonal, strict=True)}
    layers = {}
    for layer in model.layers:
        if layer.trainable_variables:
            block = curvature.GGNOperator(model, batch, variables=layer.trainable_variables,
                                          training=True)
            layers[layer.name] = {
                "largest": float(spectrum.power_iteration(block, tol=1e-4, verbose=0)
                                 .eigenvalues[0]),
                "mean_diagonal": float(np.mean(np.concatenate(
                    [of_variable[id(v)] for v in layer.trainable_variables])))}
    return {"largest": float(top[0]), "ratio_10": float(top[0] / top[9]),
            "ratio_100": float(top[0] / top[99]),
            "bulk": float(nodes[order][np.searchsorted(cumulative, 0.5)]), "layers": layers}


def epochs_to_target(model, optimizer, data, epochs, target):
    """Epochs of batch 32 until the loss on all of `data` is at most `target` (None: never)."""
    model.compile(optimizer, "sparse_categorical_crossentropy")
    for epoch in range(1, epochs + 1):
        model.fit(*data, batch_size=32, epochs=1, verbose=0)
        loss = model.evaluate(*data, batch_size=1000, verbose=0)
        if not np.isfinite(loss):
            return None, float("inf")
        if loss <= target:
            return epoch, float(loss)
    return None, float(loss)


def best_of(results):
    """The run that reached the target in the fewest epochs, else the lowest final loss."""
    reached = [r for r in results if r["epochs"] is not None]
    if reached:
        return min(reached, key=lambda r: r["epochs"])
    return min(results, key=lambda r: r["final_loss"])


def tuned(run, grid, key, larger, extensions=2):
    """`run`'s results on `grid`, extended while the best has the largest `key` tried.

    A best setting at the grid's edge is bounded by the grid, not tuned: the grid grows by
    `larger(best)` (at most `extensions` times) until a larger setting does worse.
    """
    results = list(run(grid))
    for _ in range(extensions):
        best = best_of(results)
        if best[key] < max(result[key] for result in results):
            break
        results += run([larger(best)])
    return results


def sdlm_optimizer(setting, examples):
    """SDLM at `setting`'s epsilon and mu, its diagonal re-estimated every epoch of batch 32."""
    return ks.optimizers.SDLM(setting["epsilon"], mu=setting["mu"],
                              reestimate_every=examples // 32)


def grid_runs(build, config, data, optimizer, settings, seed, args):
    """Each setting's epochs to the target from `build(config, seed)`, with `optimizer(setting)`."""
    for setting in settings:
        epochs, loss = epochs_to_target(build(config, seed), optimizer(setting), data,
                                        args.epochs, args.target)
        yield {**setting, "seed": seed, "epochs": epochs, "final_loss": loss}


def configuration_row(model_name, config, images, labels, args):
    build, shape, _ = MODELS[model_name]
    x = inputs(images, config["inputs"]).reshape(-1, *shape)
    data = (x, labels)
    batch = (x[:args.curvature_examples], labels[:args.curvature_examples])

    def sgd(setting):
        return keras.optimizers.SGD(setting["rate"])

    def sdlm(setting):
        return sdlm_optimizer(setting, len(x))

    def runs(optimizer, settings, seed):
        return grid_runs(build, config, data, optimizer, settings, seed, args)

    sgd_grid = tuned(lambda settings: runs(sgd, settings, 0),
                     [{"rate": rate} for rate in SGD_RATES], "rate",
                     lambda best: {"rate": 3 * best["rate"]})
    sdlm_grid = tuned(lambda settings: runs(sdlm, settings, 0),
                      [{"epsilon": e, "mu": mu} for e, mu in SDLM_SETTINGS], "epsilon",
                      lambda best: {"epsilon": 2.5 * best["epsilon"], "mu": best["mu"]})
    best_sgd, best_sdlm = best_of(sgd_grid), best_of(sdlm_grid)
    seeds = {"sgd": [best_sgd], "sdlm": [best_sdlm]}
    for seed in range(1, args.seeds):
        seeds["sgd"] += runs(sgd, [{"rate": best_sgd["rate"]}], seed)
        seeds["sdlm"] += runs(sdlm, [{"epsilon": best_sdlm["epsilon"],
                                      "mu": best_sdlm["mu"]}], seed)
    model = build(config, 0)
    model.compile(keras.optimizers.SGD(best_sgd["rate"]), "sparse_categorical_crossentropy")
    initial = curvature_proxies(model, batch, args.diagonal_examples)
    model.fit(*data, batch_size=32, epochs=1, verbose=0)
    after_one_epoch = curvature_proxies(model, batch, args.diagonal_examples)
    return {"model": model_name, "config": config, "initial": initial,
            "after_one_epoch": after_one_epoch, "sgd": sgd_grid, "sdlm": sdlm_grid,
            "best_sgd": best_sgd, "best_sdlm": best_sdlm, "seeds": seeds,
            **speedups(seeds)}


def configuration_row_of(arguments):
    """`configuration_row` of one tuple of arguments (for `Pool.imap_unordered`)."""
    return configuration_row(*arguments)


def speedups(seeds):
    """SDLM's speed-up: mean epochs of SGD over SDLM's, and per seed (None: a run missed)."""
    sgd = [run["epochs"] for run in seeds["sgd"]]
    sdlm = [run["epochs"] for run in seeds["sdlm"]]
    if None in sgd or None in sdlm:
        return {"sdlm_speedup": None, "sdlm_speedup_per_seed": None}
    return {"sdlm_speedup": float(np.mean(sgd) / np.mean(sdlm)),
            "sdlm_speedup_per_seed": [a / b for a, b in zip(sgd, sdlm, strict=True)]}


def linear_model_rows(images, args):
    """κ of `2 E[xxᵀ] + 2λI` against the inputs' mean norm, measured and closed form."""
    small = tf.reshape(tf.image.resize(images.reshape(-1, 28, 28, 1), (14, 14)),
                       [-1, 196]).numpy().astype("float64")[:args.curvature_examples]
    centred = small - small.mean(axis=0)
    standardized = centred / centred.std()
    targets = np.random.default_rng(0).normal(size=(len(small), 1))
    rows = []
    # In float64: at a condition number of 1e6 float32's rounding of the largest eigenvalue
    # (~1e-7 of 2e3) is a tenth of the smallest (2λ = 2e-3). It runs last, after the MLPs.
    # The policy too: Keras fixes the global policy from floatx once the first layer reads it.
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    for shift in args.mean_norms:
        x = standardized + shift / np.sqrt(196)  # mean norm `shift`
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((196,)), keras.layers.Dense(
            1, use_bias=False, kernel_regularizer=keras.regularizers.L2(args.l2))])
        model.compile(loss="mse")
        measured = spectrum.exact_eigenvalues(model, x, targets).numpy()
        closed = np.linalg.eigvalsh(2 * x.T @ x / len(x) + 2 * args.l2 * np.eye(196))
        rows.append({"mean_norm": float(np.linalg.norm(x.mean(axis=0))),
                     "condition_measured": float(measured[-1] / measured[0]),
                     "condition_closed_form": float(closed[-1] / closed[0])})
    return rows


def small_mu_runs(images, labels, args):
    """SDLM at `SMALL_MU_SETTINGS` on each model's sigmoid row (seed 0), beside the study's best.

    The sigmoid rows' lower layers have mean Gauss-Newton diagonals far below the study's mu
    (0.005 to 0.1) at initialization: the MLP's first layer 2e-5 (output 0.025), LeNet-5's C1 to
    C3 1.6e-8 to 6.8e-7 (output 0.023). There mu caps the rates at epsilon / mu, and SDLM steps
    as SGD does; LeCun's mu is small next to h.
    """
    config = {**BASELINE, "activation": "sigmoid"}
    runs = {}
    for model_name in args.models:
        build, shape, _ = MODELS[model_name]
        x = inputs(flat_images(images, model_name), config["inputs"]).reshape(-1, *shape)
        runs[model_name] = list(grid_runs(
            build, config, (x, labels), functools.partial(sdlm_optimizer, examples=len(x)),
            [{"epsilon": e, "mu": mu} for e, mu in SMALL_MU_SETTINGS], 0, args))
        print(model_name, runs[model_name], flush=True)
    return runs


def small_mu_markdown(runs, args):
    study = json.loads((RESULTS / "conditioning.json").read_text())["configurations"]
    lines = ["# SDLM with a small mu on the sigmoid rows of the conditioning study", "",
             f"{args.train} images, target training loss {args.target}, up to {args.epochs} "
             "epochs of batch 32, seed 0; generated by `benchmarks/conditioning.py --small-mu` "
             f"({environment()['date']}). The study's best of each grid beside "
             "([conditioning.md](conditioning.md), seed 0).", "",
             "| model | epsilon / mu | epochs to target | final loss |",
             "| --- | --- | --- | ---: |"]
    for model_name, results in runs.items():
        row = next(r for r in study if r["model"] == model_name
                   and r["config"]["activation"] == "sigmoid")
        name = "MLP" if model_name == "mlp" else "LeNet-5"
        for run in results:
            lines.append(f"| {name} | {run['epsilon']:g} / {run['mu']:g} | "
                         f"{run['epochs'] or '-'} | {run['final_loss']:.3g} |")
        for label, best in (("study's best SGD, rate", row["best_sgd"]),
                            ("study's best SDLM", row["best_sdlm"])):
            setting = (f"{best['rate']:g}" if "rate" in best
                       else f"{best['epsilon']:g} / {best['mu']:g}")
            lines.append(f"| {name}: {label} | {setting} | {best['epochs'] or '-'} | "
                         f"{best['final_loss']:.3g} |")
    return "\n".join(lines) + "\n"


def flat_images(images, model_name):
    """`images` flat, LeNet-5's padded to 32x32 first."""
    if model_name == "lenet5":
        images = np.pad(images, ((0, 0), (2, 2), (2, 2)))
    return images.reshape(len(images), -1)


def row_key(model_name, config):
    return json.dumps([model_name, config], sort_keys=True)


def name_of(row):
    changes = {key: value for key, value in row["config"].items() if BASELINE[key] != value}
    label = ", ".join(f"{key}={value}" for key, value in changes.items()) or "baseline"
    return f"{'MLP' if row['model'] == 'mlp' else 'LeNet-5'}: {label}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--train", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--target", type=float, default=0.1)
    parser.add_argument("--curvature-examples", type=int, default=1000)
    parser.add_argument("--diagonal-examples", type=int, default=250,
                        help="images of the per-layer mean diagonals (the first of the "
                             "--curvature-examples)")
    parser.add_argument("--mean-norms", type=float, nargs="+", default=[0, 1, 3, 10, 30])
    parser.add_argument("--l2", type=float, default=1e-3)
    parser.add_argument("--data", default=None)
    parser.add_argument("--processes", type=int, default=1,
                        help="rows measured at once (two: 64 minutes, 5.0 GB at the peak)")
    parser.add_argument("--small-mu", action="store_true",
                        help="only SDLM at SMALL_MU_SETTINGS on the sigmoid rows (seed 0), to "
                             "results/conditioning_small_mu.{json,md}")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the rows of an earlier run with the same settings")
    args = parser.parse_args()
    if args.processes < 1:
        parser.error(f"--processes must be at least 1, got {args.processes}")
    if not 1 <= args.diagonal_examples <= args.curvature_examples:
        parser.error(f"--diagonal-examples must be 1 to --curvature-examples "
                     f"({args.curvature_examples}), got {args.diagonal_examples}")
    (x_train, y_train), _ = mnist(args.data)
    images = (x_train[:args.train] / 255.0).astype("float32")
    labels = y_train[:args.train].astype("int32")
    if args.small_mu:
        runs = small_mu_runs(images, labels, args)
        write("conditioning_small_mu", {"environment": environment(), "settings": vars(args),
                                        "runs": runs}, small_mu_markdown(runs, args))
        return
    # Every finished row is appended to ROWS at once: a LeNet-5 row takes about 9 minutes (two
    # at a time), and a run stopped part way keeps what it measured. --resume reuses the rows
    # there that were measured with the same settings.
    settings = {key: value for key, value in vars(args).items()
                if key not in ("models", "resume", "processes")}
    done = {}
    if args.resume and ROWS.exists():
        for line in ROWS.read_text().splitlines():
            record = json.loads(line)
            if record["settings"] == settings:
                done[row_key(record["row"]["model"], record["row"]["config"])] = record["row"]
    elif ROWS.exists():
        ROWS.unlink()
    RESULTS.mkdir(exist_ok=True)
    keys, pending = [], []  # Every row's key in the table's order; the rows to measure.
    for model_name in args.models:
        flat = flat_images(images, model_name)
        for change in MODELS[model_name][2]:
            config = {**BASELINE, **change}
            keys.append(row_key(model_name, config))
            if keys[-1] not in done:
                pending.append((model_name, config, flat, labels, args))
    # Each row in a fresh process (one task per worker): the rows' dozens of compiled models and
    # curvature graphs otherwise pile up in one process (the kernel killed a run at 24 GB).
    with multiprocessing.get_context("spawn").Pool(args.processes, maxtasksperchild=1) as pool:
        for row in pool.imap_unordered(configuration_row_of, pending):
            done[row_key(row["model"], row["config"])] = row
            with ROWS.open("a") as rows_file:
                rows_file.write(json.dumps({"settings": settings, "row": row}) + "\n")
            print(name_of(row), row["initial"]["largest"], row["initial"]["ratio_100"],
                  row["seeds"], row["sdlm_speedup"], flush=True)
    rows = [done[key] for key in keys]
    linear = linear_model_rows(images.reshape(args.train, -1), args)
    write("conditioning", {"environment": environment(), "settings": vars(args),
                           "configurations": rows, "linear_model": linear},
          markdown(rows, linear, args))
    plot(rows, linear)


def markdown(rows, linear, args):
    lines = ["# Conditioning study (784-100-100-10 MLP and LeNet-5, MNIST)", "",
             f"{args.train} images; Gauss-Newton spectrum on {args.curvature_examples} (mean "
             f"diagonals on {args.diagonal_examples}); target "
             f"training loss {args.target}; up to {args.epochs} epochs of batch 32; each grid "
             f"tuned on seed 0, its best setting run on {args.seeds} seeds (epochs per seed; "
             f"speed-up: ratio of the mean epochs, range over seeds). Generated by "
             f"`benchmarks/conditioning.py` ({environment()['date']}).", "",
             "| configuration | λ_max (init) | λ_max/λ_100 (init) | bulk (init) | λ_max / "
             "λ_max/λ_100 (1 epoch) | SGD best rate: epochs | SDLM best: epochs | "
             "SDLM speed-up |", "| --- | ---: | ---: | ---: | ---: | --- | --- | ---: |"]
    for row in rows:
        initial, after = row["initial"], row["after_one_epoch"]
        sgd, sdlm = row["best_sgd"], row["best_sdlm"]
        sgd_epochs, sdlm_epochs = (", ".join(str(run["epochs"] or "-") for run in row["seeds"][k])
                                   for k in ("sgd", "sdlm"))
        speedup = "-"
        if row["sdlm_speedup"]:
            per_seed = row["sdlm_speedup_per_seed"]
            speedup = f"{row['sdlm_speedup']:.2f}x ({min(per_seed):.2f}-{max(per_seed):.2f})"
        lines.append(
            f"| {name_of(row)} | {initial['largest']:.3g} | "
            f"{initial['ratio_100']:.3g} | {initial['bulk']:.2g} | {after['largest']:.3g} / "
            f"{after['ratio_100']:.3g} | {sgd['rate']:g}: {sgd_epochs} | "
            f"{sdlm['epsilon']:g}/{sdlm['mu']:g}: {sdlm_epochs} | {speedup} |")
    lines += ["", "Linear model, condition number of `2E[xxᵀ] + 2λI` against the inputs' "
              "mean norm:", "", "| mean norm | measured | closed form |", "| ---: | ---: | ---: |"]
    lines += [f"| {r['mean_norm']:.2f} | {r['condition_measured']:.4g} | "
              f"{r['condition_closed_form']:.4g} |" for r in linear]
    lines += ["", "![conditioning](conditioning.png)"]
    return "\n".join(lines) + "\n"


def plot(rows, linear):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    proxy = [row["initial"]["ratio_100"] for row in rows]
    sgd_epochs = [np.mean([run["epochs"] or np.nan for run in row["seeds"]["sgd"]])
                  for row in rows]
    speedup_values = [row["sdlm_speedup"] or np.nan for row in rows]
    markers = ["o" if row["model"] == "mlp" else "s" for row in rows]
    for axis, values, label in ((axes[0], sgd_epochs, "tuned SGD: mean epochs to target"),
                                (axes[1], speedup_values, "SDLM speed-up over tuned SGD")):
        for x, y, marker, row in zip(proxy, values, markers, rows, strict=True):
            axis.plot(x, y, marker, color="C0" if marker == "o" else "C1")
            axis.annotate(name_of(row), (x, y), fontsize=7)
        axis.set(xscale="log", xlabel="λ_max / λ_100 of the Gauss-Newton matrix at init",
                 ylabel=label)
    norms = [r["mean_norm"] for r in linear]
    axes[2].plot(norms, [r["condition_closed_form"] for r in linear], "-", label="closed form")
    axes[2].plot(norms, [r["condition_measured"] for r in linear], "o", label="measured")
    axes[2].set(xlabel="norm of the inputs' mean", ylabel="condition number", yscale="log",
                title="linear model: 2E[xxᵀ] + 2λI")
    axes[2].legend()
    figure.tight_layout()
    figure.savefig(RESULTS / "conditioning.png", dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    main()
