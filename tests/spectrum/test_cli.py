"""`keras-secondorder spectrum`: its JSON against the library on the same data and seeds."""

import json
import os
import re

import keras
import numpy as np
import pytest

import keras_secondorder as ks
from keras_secondorder import cli
from keras_secondorder.callbacks._measure import measurement_batches
from keras_secondorder.curvature import dense, kinds
from keras_secondorder.datasets import DATA_ENV_VAR
from keras_secondorder.spectrum import cli as spectrum_cli
from keras_secondorder.spectrum import spectrum_summary

FAST = ["-k", "2", "--iterations", "20", "--trace-probes", "3", "--density-probes", "1",
        "--density-iterations", "8", "--quiet"]


def saved_model(tmp_path, loss="categorical_crossentropy"):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, activation="tanh",
                                                                    name="hidden"),
                              keras.layers.Dense(3, activation="softmax", name="head")])
    model.compile(loss=loss)
    path = tmp_path / "model.keras"
    model.save(path)
    return path


def saved_data(tmp_path, count=1024, features=6):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(count, features))
    y = np.argmax(x[:, :3] + 0.5 * rng.normal(size=(count, 3)), axis=1)  # Noisy labels.
    path = tmp_path / "data.npz"
    np.savez(path, x=x, y=y)
    return path, x, y


def run(tmp_path, *arguments):
    out = tmp_path / "out"
    spectrum_cli.main([*map(str, arguments), "--out", str(out), *FAST])
    return json.loads((out / "spectrum.json").read_text()), out


def test_the_json_equals_the_library_on_the_same_samples_and_seeds(float64, tmp_path):
    # Repeat r is examples r N .. (r + 1) N - 1; the integer labels are one-hot for the
    # model's categorical cross-entropy.
    model_path, data_path = saved_model(tmp_path), saved_data(tmp_path)[0]
    report, out = run(tmp_path, model_path, "--data", data_path, "--samples", 40, "--repeats",
                      2, "--batch-size", 16, "--curvature", "ggn", "--per-layer", "--seed", 3)
    model = keras.saving.load_model(model_path)
    _, x, y = saved_data(tmp_path)
    onehot = keras.utils.to_categorical(y, 3)
    for repeat in range(2):
        part = slice(40 * repeat, 40 * (repeat + 1))
        batches = measurement_batches((x[part], onehot[part]), 40, 16)
        blocks = {layer.name: kinds.get("ggn").operator(model, batches,
                                                         variables=layer.trainable_variables)
                  for layer in model.layers}
        expected, _ = spectrum_summary(kinds.get("ggn").operator(model, batches), k=2,
                                       num_iterations=20, trace_probes=3, density_probes=1,
                                       density_iterations=8, seed=3, blocks=blocks)
        actual = report["repeats"][repeat]
        for key in ("largest", "smallest", "largest_residuals", "trace", "negative_fraction"):
            np.testing.assert_allclose(actual[key], expected[key], rtol=1e-12, atol=1e-15)
        for name in ("hidden", "head"):
            np.testing.assert_allclose(actual["blocks"][name]["largest"],
                                       expected["blocks"][name]["largest"], rtol=1e-12)
    tops = [repeat["largest"][0] for repeat in report["repeats"]]
    np.testing.assert_allclose(report["summary"]["largest"][0]["mean"], np.mean(tops))
    np.testing.assert_allclose(report["summary"]["largest"][0]["std"], np.std(tops, ddof=1))
    assert report["versions"]["keras_secondorder"] == ks.__version__
    for png in ("density.png", "per_layer.png"):
        assert (out / png).stat().st_size > 1000


def test_the_spread_over_repeats_shrinks_as_the_samples_grow(float64, tmp_path):
    model_path, data_path = saved_model(tmp_path), saved_data(tmp_path)[0]
    spreads = []
    for samples in (16, 256):
        report, _ = run(tmp_path, model_path, "--data", data_path, "--samples", samples,
                        "--repeats", 4)
        spreads.append(report["summary"]["largest"][0]["std"])
    assert spreads[1] < 0.5 * spreads[0]


@pytest.mark.parametrize("case,match", [
    ("missing model", "no such file"),
    ("broken model", "does not load"),
    ("data shape", r"examples have shape \(4,\), the model's input \(6,\)"),
    ("loss", "--curvature ggn: .*mean_squared_error"),
    ("too few", "--repeats 3 of --samples 400 need 1200 examples; the data hold 1024"),
])
def test_bad_input_gets_an_error_that_names_the_fix(float64, tmp_path, capsys, case, match):
    model_path = saved_model(tmp_path, loss="mean_absolute_error" if case == "loss"
                             else "categorical_crossentropy")
    data_path = saved_data(tmp_path, features=4 if case == "data shape" else 6)[0]
    arguments = [model_path, "--data", data_path, "--curvature", "ggn", "--samples", 64]
    if case == "missing model":
        arguments[0] = tmp_path / "absent.keras"
    elif case == "broken model":
        arguments[0] = tmp_path / "broken.keras"
        arguments[0].write_text("not a model")
    elif case == "too few":
        arguments[-1] = 400
        arguments += ["--repeats", 3]
    with pytest.raises(SystemExit) as raised:
        run(tmp_path, *arguments)
    assert raised.value.code == 2
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1 and re.search(match, error), error


def test_the_console_command_runs_the_spectrum_and_refuses_unknown_commands(float64,
                                                                            tmp_path):
    out = tmp_path / "cli"
    cli.main(["spectrum", str(saved_model(tmp_path)), "--data", str(saved_data(tmp_path)[0]),
              "--samples", "32", "--repeats", "1", "--out", str(out), *FAST])
    assert json.loads((out / "spectrum.json").read_text())["summary"]["largest"][0]["std"] == 0
    with pytest.raises(SystemExit, match="usage: keras-secondorder"):
        cli.main(["spectra"])


CUSTOM_MODULE = '''
import keras


class Doubling(keras.layers.Layer):
    def call(self, x):
        return 2.0 * x
'''


def test_a_users_custom_layer_loads_from_custom_objects(float64, tmp_path, monkeypatch,
                                                        capsys):
    # Not registered as serializable: the model loads only with --custom-objects; its Hessian
    # is the model's without the layer with the inputs doubled.
    (tmp_path / "user_layers.py").write_text(CUSTOM_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    user_layers = __import__("user_layers")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), user_layers.Doubling(),
                              keras.layers.Dense(3, activation="softmax")])
    model.compile(loss="sparse_categorical_crossentropy")
    model.save(tmp_path / "custom.keras")
    data_path = saved_data(tmp_path)[0]
    arguments = [tmp_path / "custom.keras", "--data", data_path, "--samples", 32, "--repeats", 1]
    with pytest.raises(SystemExit):
        run(tmp_path, *arguments)
    assert "--custom-objects" in capsys.readouterr().err
    report, _ = run(tmp_path, *arguments, "--custom-objects", "user_layers")
    _, x, y = saved_data(tmp_path)
    plain = keras.Sequential([keras.Input((6,)), model.layers[-1]])
    plain.compile(loss="sparse_categorical_crossentropy")
    top = np.linalg.eigvalsh(dense.hessian(plain, 2.0 * x[:32], y[:32]))[-1]
    np.testing.assert_allclose(report["repeats"][0]["largest"][0], top, rtol=1e-6)


@pytest.mark.skipif(not os.environ.get(DATA_ENV_VAR), reason=f"{DATA_ENV_VAR} is not set")
def test_mnist_images_are_shaped_for_the_packaged_lenet5(tmp_path):
    model = ks.models.lenet5()
    model.compile(loss="sparse_categorical_crossentropy")
    model.save(tmp_path / "lenet5.keras")
    report, _ = run(tmp_path, tmp_path / "lenet5.keras", "--data", "mnist", "--samples", 16,
                    "--repeats", 2, "--batch-size", 16)
    assert report["settings"]["data"] == "mnist"
    assert all(np.isfinite(repeat["largest"][0]) and repeat["largest"][0] > 0
               for repeat in report["repeats"])
