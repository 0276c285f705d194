"""LeNet-5 on MNIST after 20 epochs, without and with distortions, and conv net + SVM.

Runs examples/mnist_lenet5.py (the demo's pipeline) with `--epochs 20` and `--distortions none`
and `both`, and collects test errors and times into benchmarks/results/mnist_lenet5.{json,md}.
Anchors: LeNet-5 0.95% (0.8% with distortions; LeCun et al. 1998); a conv net with elastic
distortions 0.4% (Simard et al. 2003); an SVM on conv-net features beat the conv net alone
(Huang and LeCun 2006).

Run: python benchmarks/mnist_lenet5.py [--epochs 20] [--svm-samples 20000]
"""

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

from _common import environment, write

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "mnist_lenet5.py"
TARGETS = {"none": 0.0095, "both": 0.006}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--svm-samples", type=int, default=20000)
    args = parser.parse_args()
    runs = {}
    with tempfile.TemporaryDirectory() as scratch:
        for distortions in ("none", "both"):
            summary = pathlib.Path(scratch) / f"{distortions}.json"
            subprocess.run([sys.executable, str(EXAMPLE), "--epochs", str(args.epochs),
                            "--distortions", distortions, "--svm-samples",
                            str(args.svm_samples), "--output", str(pathlib.Path(scratch) /
                                                                   distortions),
                            "--json", str(summary)], check=True)
            runs[distortions] = json.loads(summary.read_text())
    rows = ["| distortions | LeNet-5 | LeNet-5 + SVM on F6 | target (LeNet-5) | training | SVM |",
            "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for distortions, run in runs.items():
        rows.append(f"| {distortions} | {100 * run['test_error_conv_net']:.2f}% | "
                    f"{100 * run['test_error_conv_net_svm']:.2f}% | "
                    f"<= {100 * TARGETS[distortions]:.2f}% | {run['train_seconds']:.0f} s | "
                    f"{run['svm_seconds']:.0f} s ({run['support_vectors']} SVs) |")
    first = next(iter(runs.values()))
    markdown = (
        f"# LeNet-5 on MNIST, {args.epochs} epochs\n\n"
        f"SGD with momentum {first['momentum']}, batch {first['batch_size']}, learning rate "
        f"{first['lr_scale']:g} / λ_max of the Hessian (PowerMethodLR, re-estimated every 5 "
        f"epochs); SVM (RBF, C = {first['svm_c']}) on the standardized F6 features of "
        f"{first['svm_samples']} training images. {environment()['cpus']} CPU cores.\n\n"
        + "\n".join(rows) + "\n")
    write("mnist_lenet5", {"environment": environment(), "targets": TARGETS, "runs": runs},
          markdown)


if __name__ == "__main__":
    main()
