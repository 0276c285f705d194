"""Progress bars of long curvature work: shown after a delay, ended on their own line."""

import re

import keras
import pytest
from conftest import make_case

from keras_secondorder import _progress, curvature, spectrum
from keras_secondorder.callbacks import PowerMethodLR


@pytest.fixture
def no_delay(monkeypatch):
    monkeypatch.setattr(_progress, "DELAY", 0.0)


def test_lanczos_shows_the_products_done_and_ends_the_line(float64, capsys, no_delay):
    # verbose=1: the bar ends at the products made (fewer than planned when Lanczos converges
    # early), with a newline; "auto" is silent here (pytest's output is not a terminal), and
    # 0 always.
    model, x, y, _ = make_case("mlp", "ce")
    operator = curvature.HessianOperator(model, (x, y))
    result = spectrum.lanczos(operator, k=1, num_iterations=60, which="largest", tol=1e-4,
                              verbose=1)
    out = capsys.readouterr().out
    assert result.num_products < 60
    assert f"{result.num_products}/{result.num_products}" in out and out.endswith("\n")
    for verbose in ("auto", 0):
        spectrum.hutchinson_trace(operator, 3, verbose=verbose)
        spectrum.spectral_density(operator, num_iterations=5, verbose=verbose)
        curvature.diagonal(model, (x, y), verbose=verbose)
        assert capsys.readouterr().out == ""


def test_diagonal_over_a_dataset_counts_its_batches(float64, capsys, no_delay):
    model, x, y, _ = make_case("mlp", "ce", batch=30)
    batches = [(x[i:i + 10], y[i:i + 10]) for i in range(0, 30, 10)]
    curvature.diagonal(model, batches, verbose=1)
    assert "3/3" in capsys.readouterr().out


def test_power_method_lr_ends_its_bar_before_its_message(float64, capsys, no_delay):
    # The iteration stops early (tol 1e-3, at most 50 products): the bar must end at the
    # products made, on its own line, and the result start a new one.
    model, x, y, _ = make_case("mlp", "ce", batch=40)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="categorical_crossentropy")
    callback = PowerMethodLR((x, y), num_samples=40, tol=1e-3, max_iterations=50, verbose=1)
    callback.set_model(model)
    callback.estimate()
    out = capsys.readouterr().out
    products = int(re.search(r"\((\d+) hessian products\)", out).group(1))
    assert products < 50 and f"{products}/{products}" in out
    assert "\nPowerMethodLR: λ_max" in out


def test_a_bar_is_not_shown_before_the_delay_and_bad_verbose_is_refused(capsys):
    progress = _progress.Progress(10, "products", verbose=1, delay=60.0)
    for _ in range(10):
        progress.add()
    progress.finish()
    assert capsys.readouterr().out == "" and progress.done == 10
    with pytest.raises(ValueError, match="`verbose` must be one of"):
        _progress.Progress(10, "products", verbose="loud")
