"""LeNet-5 on MNIST, then an SVM on its chopped features, exported as a SavedModel: `make demo`.

1. LeNet-5 (LeCun et al. 1998) trained with SDLM, LeCun's stochastic diagonal
   Levenberg-Marquardt method: each weight's rate is `epsilon / (h_kk + mu)`, `h` the
   Gauss-Newton diagonal (Becker-LeCun back-propagation) re-estimated on 500 examples every
   epoch. PowerMethodLR sets `epsilon = scale / λ_max` of the curvature SDLM's scaling leaves,
   `P^1/2 H P^1/2` with `P = 1/(h + mu)`, re-estimated every epoch on `--lr-samples` training
   images, times a cosine decay over the run; one estimate may at most double epsilon
   (`--max-increase`), which keeps it from running away as λ_max falls. λ_max of a sample's
   Hessian overstates the whole training set's once the net fits most images, since a few
   images' curvature dominates a small sample: runs that measure on 500, 1000, 2000 and 4000
   images end with λ_max at 362, 163, 123 and 74, so the default measures on 2000.
   The demo prints the epsilons it chose beside the best fixed epsilon of a grid measured once
   (benchmarks/results/lenet5_epsilon_grid.md); `--epsilon` trains with a fixed epsilon
   instead. HessianSpectrum measures the Hessian's top eigenvalues, trace and negative
   fraction at the end (on 500 images).
2. A Gaussian-kernel SVM (scikit-learn) on the standardized F6 features of the trained net,
   fitted on all 60,000 training images with C = 1 (3-fold cross-validation over 1, 10 and 100
   on 10,000 images chose 1 on seeds 0, 1 and 2; `--svm-c 1 10 100` runs it), turned into
   one Keras model whose predictions equal sklearn's. Fitted on 10,000 only, it was worse than
   the net (seed 0: 1.12% against 0.97%; 20,000: 1.01%, 60,000: 0.97%).
3. Both exported in TensorFlow Serving's layout and verified with TensorFlow alone, in one
   fresh process started after training: LeNet-5's check runs beside the SVM's fit, the
   SVM's beside sklearn's test predictions.

The default (12 epochs, no distortions) takes about two minutes on two CPU cores (120-150 s as
this machine's speed varies); `--epochs 20 --distortions elastic` is the full run.

Run: python examples/mnist_lenet5.py [--epochs 12] [--distortions none|affine|elastic|both]
     [--epsilon E] [--lr-samples 2000] [--svm-samples 60000] [--output artifacts]
     [--json results.json]
"""

import argparse
import json
import math
import pathlib
import time
from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np
from sklearn.model_selection import GridSearchCV

import keras_secondorder
from keras_secondorder import models, svm
from keras_secondorder.callbacks import HessianSpectrum, PowerMethodLR
from keras_secondorder.datasets import lenet_preprocess, mnist, mnist_dataset
from keras_secondorder.export import savedmodel
from keras_secondorder.optimizers import SDLM

# The fixed-epsilon grid, measured once by `benchmarks/mnist_lenet5.py --epsilon-grid`.
GRID_RESULTS = (pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "results"
                / "lenet5_epsilon_grid.json")


def fit_svm(model, images, labels, grid, cv_samples):
    """`svm.svm_pipeline(model)` fitted on `images`, its C chosen from `grid` beforehand.

    C is chosen by 3-fold cross-validation on the first `cv_samples` images (the search's nine
    fits on all 60,000 would take most of the demo's time); the SVM is then fitted on all of
    them. The chopped features are computed once.
    """
    pipeline = svm.svm_pipeline(model, batch_size=1000)
    features = pipeline[0].fit_transform(images)
    classifier = pipeline[1:]  # The scaler and SVC steps, shared with `pipeline`.
    if len(grid) > 1:
        search = GridSearchCV(classifier, {"svc__C": grid}, cv=3, refit=False).fit(
            features[:cv_samples], labels[:cv_samples])
        classifier.set_params(**search.best_params_)
    else:
        classifier.set_params(svc__C=grid[0])
    classifier.fit(features, labels)
    return pipeline


def export_and_verify(verifier, name, model, output, images):
    """`(name, info)`: `model` exported to `output/serving/name/1`, checked on `images`."""
    directory = savedmodel.export(model, output / "serving" / name / "1", features_layer="f6",
                                  overwrite=True)
    printout, difference = verifier.verify(model, directory, images, features_layer="f6")
    return name, {"directory": str(directory), "max_abs_difference": difference,
                  "printout": printout}


def what_the_curvature_said(args, history):
    """Two lines: the epsilon PowerMethodLR chose beside the grid's best, and the spectrum."""
    if args.epsilon is None:
        lambda_max, rates = history["lambda_max"], history["learning_rate"]
        chose = (f"PowerMethodLR's epsilon = {args.lr_scale:g} / λ_max of the SDLM-scaled "
                 f"Hessian on {args.lr_samples} images, λ_max {lambda_max[0]:.4g} -> "
                 f"{lambda_max[-1]:.4g} over the epochs; "
                 f"epsilon by epoch {', '.join(f'{rate:.2g}' for rate in rates)}")
    else:
        chose = f"fixed epsilon {args.epsilon:g} (times the cosine decay)"
    if GRID_RESULTS.exists():
        grid = json.loads(GRID_RESULTS.read_text())
        best = min(grid["runs"], key=lambda run: run["test_error_conv_net"])
        chose += (f". Best fixed epsilon of the grid {', '.join(f'{e:g}' for e in grid['grid'])}"
                  f" ({grid['date']}, the default settings): {best['epsilon']:g} with "
                  f"{100 * best['test_error_conv_net']:.2f}% test error")
    hessian = {key.removeprefix("hessian_"): values[-1] for key, values in history.items()
               if key.startswith("hessian_")}
    return (f"{chose}.\nHessian at the end (500 training images): top eigenvalues "
            f"{hessian['top_1']:.3g}, {hessian['top_2']:.3g}, {hessian['top_3']:.3g}, smallest "
            f"{hessian['min']:.2g}, trace {hessian['trace']:.3g}, negative fraction "
            f"{100 * hessian['negative_fraction']:.2f}%.")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--distortions", default="none",
                        choices=["none", "affine", "elastic", "both"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--mu", type=float, default=0.05, help="SDLM's damping")
    parser.add_argument("--lr-scale", type=float, default=1.0,
                        help="SDLM's epsilon = lr_scale / λ_max of the scaled Hessian")
    parser.add_argument("--epsilon", type=float, default=None,
                        help="a fixed epsilon (times the cosine decay) in place of PowerMethodLR")
    parser.add_argument("--lr-samples", type=int, default=2000,
                        help="training images PowerMethodLR measures λ_max on (the spectrum: "
                             "the first 500)")
    parser.add_argument("--max-increase", type=float, default=2.0,
                        help="each epoch's estimate may at most multiply epsilon by this")
    parser.add_argument("--weight-decay", type=float, default=1e-2,
                        help="decoupled weight decay: w <- w - epsilon * weight_decay * w")
    parser.add_argument("--svm-samples", type=int, default=60000,
                        help="training images the SVM is fitted on")
    parser.add_argument("--svm-c", type=float, nargs="+", default=[1.0],
                        help="the SVM's C, chosen by 3-fold cross-validation when several")
    parser.add_argument("--svm-cv-samples", type=int, default=10000,
                        help="training images the cross-validation of C runs on")
    parser.add_argument("--output", default="artifacts")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    distortions = None if args.distortions == "none" else args.distortions
    output = pathlib.Path(args.output)
    keras.utils.set_random_seed(args.seed)

    (x_train, y_train), (x_test, y_test) = mnist(args.data_dir)
    if not 1 <= args.lr_samples <= len(x_train):
        parser.error(f"--lr-samples must be 1 to {len(x_train)} (training images), got "
                     f"{args.lr_samples}")
    if not all(math.isfinite(c) and c > 0 for c in args.svm_c):
        parser.error(f"--svm-c must be finite values > 0 (the SVM's margin penalty), got "
                     f"{' '.join(f'{c:g}' for c in args.svm_c)}; e.g. --svm-c 1 10 100")
    if not 30 <= args.svm_cv_samples <= args.svm_samples <= len(x_train):
        parser.error(f"--svm-cv-samples ({args.svm_cv_samples}) and --svm-samples "
                     f"({args.svm_samples}) must satisfy 30 <= cv samples <= samples <= "
                     f"{len(x_train)} (training images; 3 folds of 10 classes need 30)")
    train = mnist_dataset("train", args.batch_size, distortions=distortions, seed=args.seed,
                          data_dir=args.data_dir)
    test = mnist_dataset("test", 1000, data_dir=args.data_dir)
    measured = (lenet_preprocess(x_train[:args.lr_samples]).numpy(),
                y_train[:args.lr_samples].astype("int32"))

    steps_per_epoch = math.ceil(len(x_train) / args.batch_size)
    model = keras_secondorder.wrap(models.lenet5())
    # PowerMethodLR scales this shape: epsilon_t = (lr_scale / λ_max) * cos-decay(t), as LeCun
    # decreased epsilon over the passes.
    shape = keras.optimizers.schedules.CosineDecay(args.epsilon or 1.0,
                                                   args.epochs * steps_per_epoch)
    # 32 steps per call of the compiled step: LeNet-5's steps at batch 64 are short enough
    # (7-10 ms on two cores) that fit's per-call overhead costs about a sixth of an epoch.
    model.compile(optimizer=SDLM(shape, mu=args.mu, reestimate_every=steps_per_epoch,
                                      weight_decay=args.weight_decay or None),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  steps_per_execution=32)
    # 30 Lanczos steps (the default is 60): on a partly trained LeNet-5 the top three
    # eigenvalues and the smallest agree with 60 steps' to four digits, in half the time.
    spectrum = HessianSpectrum(measured, every_n_epochs=args.epochs, k=3,
                               num_samples=min(500, args.lr_samples),
                               lanczos_iterations=30, trace_probes=10, density_iterations=30,
                               density_probes=2, verbose=0)
    callbacks = [spectrum]
    if args.epsilon is None:
        # tol=1e-2: the rate needs λ_max to 1%, not PowerMethodLR's default 0.1%; with the last
        # estimate's eigenvector as the start, 3-10 Hessian products an epoch.
        callbacks.insert(0, PowerMethodLR(measured, num_samples=args.lr_samples,
                                          scale=args.lr_scale, every_n_epochs=1,
                                          max_increase=args.max_increase, tol=1e-2, verbose=0))
    start = time.perf_counter()
    # shuffle=False: `train` reshuffles itself every epoch (Keras warns it ignores shuffle=True).
    # The test set is evaluated once, after the last epoch (0.2-0.3 s an epoch otherwise).
    history = model.fit(train, epochs=args.epochs, validation_data=test,
                        validation_freq=args.epochs, verbose=2, shuffle=False,
                        callbacks=callbacks).history
    train_seconds = time.perf_counter() - start
    conv_error = 1.0 - history["val_accuracy"][-1]
    if not math.isfinite(history["loss"][-1]) or conv_error > 0.5:
        # An SVM on the saturated features of a diverged net would take hours to fit.
        raise SystemExit(
            f"LeNet-5 diverged (training loss {history['loss'][-1]:.4g}, test error "
            f"{100 * conv_error:.1f}%; epsilon by epoch {history.get('learning_rate')}): the SVM "
            "and the export are skipped. Lower --lr-scale (or --epsilon) or raise --batch-size."
        )
    model_path = output / "lenet5.keras"
    output.mkdir(parents=True, exist_ok=True)
    model.save(model_path)
    test_images = lenet_preprocess(x_test).numpy()
    # The checking process imports TensorFlow (about 3 s of one core) while the SVM's features
    # are computed; each check then only loads and runs its SavedModel, in a background thread.
    with savedmodel.Verifier() as verifier, ThreadPoolExecutor(max_workers=2) as background:
        exports = [background.submit(export_and_verify, verifier, "lenet5", model, output,
                                     test_images[:256])]
        start = time.perf_counter()
        svm_images = lenet_preprocess(x_train[: args.svm_samples]).numpy()
        svm_targets = y_train[: args.svm_samples]
        pipeline = fit_svm(model, svm_images, svm_targets, args.svm_c, args.svm_cv_samples)
        svm_c = pipeline.named_steps["svc"].C
        combined = svm.svm_model(pipeline)
        # Keras's SavedModel writer unsets a model's predict function while it runs, so the
        # SVM's export starts after its `predict`, beside sklearn's predictions.
        votes = combined.predict(test_images, batch_size=1000, verbose=0)
        exports.append(background.submit(export_and_verify, verifier, "lenet5_svm", combined,
                                         output, test_images[:256]))
        svm_labels = pipeline.classes_[np.argmax(votes, axis=1)]
        agreement = float(np.mean(svm_labels == pipeline.predict(test_images)))
        svm_error = float(np.mean(svm_labels != y_test))
        svm_seconds = time.perf_counter() - start
        combined.save(output / "lenet5_svm.keras")
        exported = dict(export.result() for export in exports)
    for info in exported.values():
        print(info.pop("printout"), end="")

    results = {
        "epochs": args.epochs, "distortions": args.distortions, "batch_size": args.batch_size,
        "optimizer": "SDLM", "mu": args.mu, "epsilon": args.epsilon, "lr_scale": args.lr_scale,
        "max_increase": args.max_increase, "lr_samples": args.lr_samples,
        "weight_decay": args.weight_decay,
        "lambda_max": history.get("lambda_max"),
        "learning_rate": history.get("learning_rate"), "train_seconds": train_seconds,
        "test_error_conv_net": conv_error, "test_error_conv_net_svm": svm_error,
        "svm_samples": args.svm_samples, "svm_cv_samples": args.svm_cv_samples,
        "svm_c": svm_c, "svm_c_grid": args.svm_c,
        "support_vectors": int(len(pipeline.named_steps["svc"].support_)),
        "svm_seconds": svm_seconds, "keras_svm_agrees_with_sklearn": agreement,
        "hessian": {key: history[key][-1] for key in history if key.startswith("hessian_")},
        "exported": exported,
    }
    print(f"\n{'model':<28}{'test error':>12}")
    print(f"{'LeNet-5':<28}{100 * conv_error:>11.2f}%")
    print(f"{'LeNet-5 + SVM on F6':<28}{100 * svm_error:>11.2f}%")
    print(f"Training {train_seconds:.0f} s; SVM {svm_seconds:.0f} s "
          f"({results['support_vectors']} support vectors, C = {svm_c:g}), Keras SVM = sklearn "
          f"on {100 * agreement:.2f}% of the test set.")
    print(what_the_curvature_said(args, history))
    for name, info in exported.items():
        print(f"SavedModel {name}: {info['directory']} (TF-only check: max abs difference "
              f"{info['max_abs_difference']:.1e})")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
