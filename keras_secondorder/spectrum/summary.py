"""One call for the numbers that describe a curvature operator's spectrum, and their spread."""

import numpy as np

from keras_secondorder._progress import ProgressOperator
from keras_secondorder._validation import positive_int
from keras_secondorder.spectrum.density import hutchinson_trace, spectral_density
from keras_secondorder.spectrum.lanczos import lanczos


def spectrum_summary(operator, k=5, num_iterations=None, tol=1e-6, trace_probes=30,
                     density_probes=4, density_iterations=60, seed=0, blocks=None,
                     progress=None):
    """Extreme eigenvalues, trace, density and negative fraction of one operator.

    Lanczos gives the `k` largest and smallest eigenvalues with their residual bounds,
    Hutchinson's estimate the trace, stochastic Lanczos quadrature the density; each of
    `blocks` (a diagonal block of the matrix, e.g. one layer's, as its own operator) gets its
    largest eigenvalue and trace. Lanczos and the traces use `seed`, the density `seed + 1`.

    Args:
        operator: a self-adjoint `tf.linalg.LinearOperator`, e.g. `curvature.HessianOperator`.
        k: eigenvalues at each end. Defaults to `5`.
        num_iterations: Lanczos steps at most. Defaults to `None`: `max(10 k, 60)` (at most the
            dimension).
        tol: Lanczos's relative residual tolerance (see `lanczos`). Defaults to `1e-6`.
        trace_probes: Hutchinson probes. Defaults to `30`.
        density_probes: the density's random start vectors. Defaults to `4`.
        density_iterations: Lanczos steps of the density's quadrature. Defaults to `60`.
        seed: seed of the random vectors. Defaults to `0`.
        blocks: `{name: operator}` of diagonal blocks. Defaults to `None`: none.
        progress: a `_progress.Progress` that counts the products (one bar over several
            calls). Defaults to `None`.

    Returns:
        `(values, density)`: `values` a dict of Python numbers and lists (`largest`,
        `smallest`, their `largest_residuals` / `smallest_residuals`, `relative_residual`: the
        largest residual over `|θ|` of the values returned, `converged`, `trace`,
        `trace_error`, `negative_fraction`, `negative_fraction_error`, `condition`
        (`λ_max / |λ_min|`), `learning_rate` (`1 / λ_max`, LeCun's optimal rate), `products`
        and `blocks`: `{name: {"largest", "trace", "mean_diagonal"}}`), and the
        `SpectralDensity`.
    """
    positive_int(k, "k")
    iterations = num_iterations or default_iterations(k)
    operator = ProgressOperator(operator, progress)
    extremes = lanczos(operator, k=k, num_iterations=min(iterations, operator.shape[-1]),
                       tol=tol, seed=seed, verbose=0)
    trace = hutchinson_trace(operator, trace_probes, seed=seed, verbose=0)
    density = spectral_density(operator, num_probes=density_probes,
                               num_iterations=density_iterations, seed=seed + 1, verbose=0)
    largest, smallest = extremes.largest.numpy(), extremes.smallest.numpy()
    residuals = np.concatenate([extremes.largest_residuals.numpy(),
                                extremes.smallest_residuals.numpy()])
    values = np.abs(np.concatenate([largest, smallest]))
    values = {
        "largest": largest.tolist(),
        "smallest": smallest.tolist(),
        "largest_residuals": extremes.largest_residuals.numpy().tolist(),
        "smallest_residuals": extremes.smallest_residuals.numpy().tolist(),
        "relative_residual": float(np.max(residuals / np.maximum(values, 1e-300))),
        "converged": bool(extremes.converged),
        "trace": float(trace.trace),
        "trace_error": float(trace.standard_error),
        "negative_fraction": float(density.negative_fraction),
        "negative_fraction_error": float(density.negative_fraction_error),
        "condition": float(largest[0]) / max(abs(float(smallest[0])), 1e-30),
        "learning_rate": 1.0 / float(largest[0]) if largest[0] > 0 else float("inf"),
        "products": extremes.num_products + trace_probes + int(density.num_products),
        "blocks": {},
    }
    for name, block in (blocks or {}).items():
        block = ProgressOperator(block, progress)
        top = lanczos(block, k=1, num_iterations=min(iterations, block.shape[-1]), tol=tol,
                      seed=seed, verbose=0)
        block_trace = float(hutchinson_trace(block, trace_probes, seed=seed, verbose=0).trace)
        values["blocks"][name] = {"largest": float(top.largest[0]), "trace": block_trace,
                                  "mean_diagonal": block_trace / int(block.shape[-1])}
        values["products"] += top.num_products + trace_probes
    return values, density


def default_iterations(k):
    """Lanczos steps at most when none are given: `max(10 k, 60)`."""
    return max(10 * k, 60)


def planned_products(k=5, num_iterations=None, trace_probes=30, density_probes=4,
                     density_iterations=60, num_blocks=0):
    """The products one `spectrum_summary` call makes at most (its progress bar's total)."""
    iterations = num_iterations or default_iterations(k)
    return ((iterations + trace_probes) * (1 + num_blocks)
            + density_iterations * density_probes)


def spread(summaries):
    """Mean and standard deviation over repeats of every number in `spectrum_summary` values.

    Args:
        summaries: a list of `values` dicts of `spectrum_summary`, one per disjoint sample.

    Returns:
        A dict of the same structure whose numbers (and list entries) are
        `{"mean": m, "std": s}` (`s` with `ddof=1`; 0 for one repeat); booleans are `all`.
    """
    first = summaries[0]
    if isinstance(first, dict):
        return {key: spread([summary[key] for summary in summaries]) for key in first}
    if isinstance(first, bool):
        return all(summaries)
    if isinstance(first, list):
        count = min(len(summary) for summary in summaries)
        return [spread([summary[i] for summary in summaries]) for i in range(count)]
    array = np.asarray(summaries, dtype=float)
    return {"mean": float(np.mean(array)),
            "std": float(np.std(array, ddof=1)) if len(array) > 1 else 0.0}
