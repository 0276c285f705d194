"""`keras-secondorder spectrum`: the curvature spectrum of a saved model, with error bars.

    keras-secondorder spectrum lenet5.keras --data mnist --samples 1024 --repeats 3 --out out
    python -m keras_secondorder.spectrum model.keras --data data.npz --curvature ggn --per-layer

Every estimate is made `--repeats` times, each on its own `--samples` examples (repeat `r` takes
examples `r N` to `(r + 1) N - 1` of the data, in their order), and reported as mean ± standard
deviation over the repeats: the spread is the sampling noise of the examples, which a single
number hides. The Lanczos residuals bound each extreme eigenvalue's error on its sample; the
table states the largest relative residual reached.

Writes `--out`/spectrum.json (every number of every repeat, their spread, the settings and the
versions), density.png (the first repeat's spectral density, the top eigenvalues marked) and,
with `--per-layer`, per_layer.png; prints a table.
"""

import argparse
import importlib
import json
import math
import pathlib
import platform
import time

import keras
import numpy as np
import tensorflow as tf

import keras_secondorder
from keras_secondorder._progress import Progress
from keras_secondorder.callbacks._measure import disjoint_samples, measurement_batches
from keras_secondorder.curvature import kinds
from keras_secondorder.datasets import lenet_preprocess, mnist
from keras_secondorder.spectrum.summary import planned_products, spectrum_summary, spread


class CommandError(Exception):
    """A mistake in the command's input, reported as one line naming the fix."""


def add_arguments(parser):
    """The `spectrum` command's arguments, on an `argparse` parser."""
    parser.add_argument("model", help="a saved .keras model, compiled with its loss")
    parser.add_argument("--data", required=True,
                        help="'mnist' (the package's loader), a .npz file with arrays x and y, "
                             "or tfds:NAME[:SPLIT] (TensorFlow Datasets, images scaled to "
                             "[0, 1])")
    parser.add_argument("--data-dir", default=None,
                        help="MNIST IDX files for --data mnist (else KERAS_SECONDORDER_DATA, "
                             "then tfds)")
    parser.add_argument("--samples", type=int, default=1024, help="examples per repeat")
    parser.add_argument("--repeats", type=int, default=3,
                        help="disjoint samples each estimate is made on")
    parser.add_argument("--batch-size", type=int, default=256, help="examples per product")
    parser.add_argument("--curvature", default="hessian", choices=kinds.names())
    parser.add_argument("--training", action="store_true",
                        help="the training-mode objective (dropout, BatchNorm batch moments)")
    parser.add_argument("--per-layer", action="store_true",
                        help="also each layer's top eigenvalue and trace")
    parser.add_argument("-k", "--top", type=int, default=5, dest="k",
                        help="eigenvalues at each end")
    parser.add_argument("--iterations", type=int, default=None,
                        help="Lanczos steps at most (default max(10 k, 60))")
    parser.add_argument("--tol", type=float, default=1e-6,
                        help="Lanczos's relative residual tolerance")
    parser.add_argument("--trace-probes", type=int, default=30)
    parser.add_argument("--density-probes", type=int, default=4)
    parser.add_argument("--density-iterations", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--custom-objects", default=None, metavar="MODULE",
                        help="a module whose classes the model needs (imported, and passed "
                             "to the loader)")
    parser.add_argument("--out", default="spectrum", help="directory for the JSON and PNGs")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def load_model(path, custom_objects=None):
    """The saved model at `path`, with the classes of the module `custom_objects`."""
    objects = {}
    if custom_objects is not None:
        try:
            module = importlib.import_module(custom_objects)
        except ImportError as error:
            raise CommandError(f"--custom-objects {custom_objects!r} cannot be imported "
                               f"({error}); pass a module on PYTHONPATH.") from error
        objects = {name: value for name, value in vars(module).items()
                   if isinstance(value, type)}
    if not pathlib.Path(path).is_file():
        raise CommandError(f"model {path!r}: no such file; pass a saved .keras model.")
    try:
        model = keras.saving.load_model(path, custom_objects=objects)
    except Exception as error:  # Keras raises many kinds; each becomes the same advice.
        raise CommandError(
            f"model {path!r} does not load: {type(error).__name__}: {error}. Pass a model "
            "saved with model.save('name.keras'); if it uses custom layers or losses, name "
            "their module with --custom-objects.") from error
    if not getattr(model, "loss", None):
        raise CommandError(f"model {path!r} was saved uncompiled: the curvature needs its "
                           "loss. Compile it with its loss before model.save().")
    return model


def load_data(spec, data_dir=None):
    """`(x, y, source)`: the examples named by `--data`."""
    if spec == "mnist":
        (x, y), _ = mnist(data_dir)
        return x, y, "mnist"
    if spec.startswith("tfds:"):
        import tensorflow_datasets as tfds

        name, _, split = spec[len("tfds:"):].partition(":")
        x, y = tfds.as_numpy(tfds.load(name, split=split or "train", as_supervised=True,
                                       batch_size=-1))
        if x.dtype == np.uint8:
            x = x.astype("float32") / 255.0
        return x, y, "tfds"
    path = pathlib.Path(spec)
    if path.suffix != ".npz" or not path.is_file():
        raise CommandError(f"--data {spec!r}: expected 'mnist', tfds:NAME[:SPLIT] or an "
                           "existing .npz file with arrays x and y.")
    with np.load(path) as arrays:
        missing = {"x", "y"} - set(arrays.files)
        if missing:
            raise CommandError(f"--data {spec!r} lacks the arrays {sorted(missing)} (it has "
                               f"{arrays.files}); save it with np.savez(path, x=x, y=y).")
        return arrays["x"], arrays["y"], "npz"


def fit_to_model(model, x, y, source):
    """`(x, y)` as the model takes them; MNIST images are shaped for it, else checked."""
    shape = tuple(model.inputs[0].shape[1:])
    if source == "mnist":
        if shape == (32, 32, 1):  # The package's LeNet-5.
            x = lenet_preprocess(x).numpy()
        elif None not in shape and math.prod(shape) == 784:
            x = (x.astype("float32") / 255.0).reshape((-1, *shape))
    if len(x.shape) != len(shape) + 1 or any(
            want is not None and want != got for want, got in zip(shape, x.shape[1:],
                                                                  strict=True)):
        raise CommandError(
            f"the data's examples have shape {tuple(x.shape[1:])}, the model's input "
            f"{shape}; pass data shaped like the model's input (x of shape (N, "
            f"{', '.join(str(d) for d in shape)})).")
    loss = getattr(model.loss, "name", model.loss)
    if y.ndim == 1 and loss == "categorical_crossentropy":
        y = keras.utils.to_categorical(y, model.outputs[0].shape[-1])
    return x.astype(keras.config.floatx()) if x.dtype.kind == "f" else x, y


def measure(model, x, y, args, progress=None):
    """Per repeat, `spectrum_summary` values, and the first repeat's density."""
    if args.samples < 1 or args.repeats < 1:
        raise CommandError(f"--samples ({args.samples}) and --repeats ({args.repeats}) must be "
                           "positive.")
    if len(x) < args.samples * args.repeats:
        raise CommandError(
            f"--repeats {args.repeats} of --samples {args.samples} need "
            f"{args.samples * args.repeats} examples; the data hold {len(x)}. Lower --samples "
            "or --repeats.")
    batches = measurement_batches((x, y), args.samples * args.repeats, args.batch_size)
    kind = kinds.get(args.curvature, "--curvature")
    layers = ([layer for layer in model.layers if layer.trainable_variables]
              if args.per_layer else [])
    summaries, density = [], None
    for repeat_batches in disjoint_samples(batches, args.repeats, args.samples,
                                           args.batch_size):
        try:
            operator = kind.operator(model, repeat_batches, training=args.training)
            blocks = {layer.name: kind.operator(model, repeat_batches, training=args.training,
                                                variables=layer.trainable_variables)
                      for layer in layers}
        except ValueError as error:  # A loss without a Gauss-Newton split, listed.
            raise CommandError(f"--curvature {args.curvature}: {error}") from error
        summary, repeat_density = spectrum_summary(
            operator, k=args.k, num_iterations=args.iterations, tol=args.tol,
            trace_probes=args.trace_probes, density_probes=args.density_probes,
            density_iterations=args.density_iterations, seed=args.seed, blocks=blocks,
            progress=progress)
        summaries.append(summary)
        density = density or repeat_density
    return summaries, density


def table(report):
    """The printed summary: every estimate as mean ± std over the repeats."""
    summary, settings = report["summary"], report["settings"]

    def row(label, value):
        return f"  {label:<28} {value['mean']:>12.5g} ± {value['std']:<10.3g}"

    lines = [f"{settings['curvature']} spectrum of {settings['model']}: {settings['repeats']} "
             f"repeats of {settings['samples']} examples of {settings['data']} "
             f"({'training' if settings['training'] else 'inference'} mode)",
             f"  {'':<28} {'mean':>12}   std"]
    lines += [row(f"eigenvalue {i + 1} (largest)" if i == 0 else f"eigenvalue {i + 1}", value)
              for i, value in enumerate(summary["largest"])]
    lines += [row("smallest eigenvalue", summary["smallest"][0]),
              row("trace (Hutchinson)", summary["trace"]),
              row("negative fraction (SLQ)", summary["negative_fraction"]),
              row("learning rate 1/λ_max", summary["learning_rate"])]
    worst = max(repeat["relative_residual"] for repeat in report["repeats"])
    lines.append(f"  Lanczos residuals: every eigenvalue above within {worst:.1e} relative of "
                 f"an eigenvalue of its sample's matrix (tol {settings['tol']:g}"
                 f"{'' if summary['converged'] else '; not reached in every repeat'}).")
    for name, block in summary["blocks"].items():
        lines.append(f"  layer {name:<22} top {block['largest']['mean']:.4g} ± "
                     f"{block['largest']['std']:.2g}, trace {block['trace']['mean']:.4g} ± "
                     f"{block['trace']['std']:.2g}")
    return "\n".join(lines)


def plot(report, density, out):
    """density.png and (per layer) per_layer.png in `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curvature = report["settings"]["curvature"]
    figure, axis = plt.subplots(figsize=(6.5, 4))
    axis.semilogy(density.grid.numpy(), density.density.numpy() + 1e-12,
                  label="density (first repeat)")
    for index, value in enumerate(report["summary"]["largest"]):
        axis.axvline(value["mean"], color="C3", lw=0.8, ls="--",
                     label="top eigenvalues (mean)" if index == 0 else None)
    axis.set(xlabel="eigenvalue", ylabel="density",
             title=f"{curvature} spectral density, {report['settings']['samples']} examples")
    axis.legend()
    figure.savefig(out / "density.png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    blocks = report["summary"]["blocks"]
    if blocks:
        figure, axis = plt.subplots(figsize=(6.5, 4))
        names = list(blocks)
        axis.bar(names, [blocks[n]["largest"]["mean"] for n in names],
                 yerr=[blocks[n]["largest"]["std"] for n in names], capsize=4)
        axis.set(ylabel="top eigenvalue (mean ± std)", yscale="log",
                 title=f"{curvature}: largest eigenvalue of each layer's block")
        axis.tick_params(axis="x", rotation=45)
        figure.savefig(out / "per_layer.png", dpi=100, bbox_inches="tight")
        plt.close(figure)


def run(args):
    """Loads, measures, writes `--out` and returns the report (a dict)."""
    start = time.perf_counter()
    model = load_model(args.model, args.custom_objects)
    x, y, source = load_data(args.data, args.data_dir)
    x, y = fit_to_model(model, x, y, source)
    layers = sum(1 for layer in model.layers if layer.trainable_variables) if args.per_layer \
        else 0
    planned = args.repeats * planned_products(args.k, args.iterations, args.trace_probes,
                                              args.density_probes, args.density_iterations,
                                              layers)
    progress = Progress(planned, "products", 0 if args.quiet else 1)
    summaries, density = measure(model, x, y, args, progress)
    progress.finish()
    report = {
        "settings": {**vars(args), "model": str(args.model)},
        "versions": {"keras_secondorder": keras_secondorder.__version__,
                     "tensorflow": tf.__version__, "keras": keras.__version__,
                     "numpy": np.__version__, "python": platform.python_version()},
        "summary": spread(summaries),
        "repeats": summaries,
        "density": {"grid": density.grid.numpy().tolist(),
                    "density": density.density.numpy().tolist()},
        "seconds": time.perf_counter() - start,
    }
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "spectrum.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(report, density, out)
    return report


def main(argv=None):
    """`keras-secondorder spectrum MODEL --data ...`; exits with status 2 on bad input."""
    parser = argparse.ArgumentParser(prog="keras-secondorder spectrum",
                                     description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        report = run(args)
    except CommandError as error:
        parser.exit(2, f"keras-secondorder spectrum: error: {error}\n")
    print(table(report))
    print(f"Wrote {pathlib.Path(args.out) / 'spectrum.json'} and the PNGs "
          f"({report['seconds']:.0f} s).")
