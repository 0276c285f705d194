"""The package as `pip install` gives it: a wheel, installed in a fresh venv outside the checkout,
whose `keras-secondorder-export` console script exports and verifies a model."""

import os
import pathlib
import subprocess
import sys
import sysconfig

import keras
import pytest

from keras_secondorder import models
from keras_secondorder.datasets import DATA_ENV_VAR

ROOT = pathlib.Path(__file__).resolve().parents[2]


def run(command, cwd, env=None):
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.skipif(not os.environ.get(DATA_ENV_VAR), reason=f"{DATA_ENV_VAR} is not set")
def test_wheel_in_a_fresh_venv_exports_with_its_console_script(tmp_path):
    run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir",
         str(tmp_path / "dist"), str(ROOT)], cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("keras_secondorder-*.whl")
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        cwd=tmp_path)
    # TensorFlow, Keras and the rest come from this environment's site-packages, named in a .pth
    # file: a plain path entry, so this environment's editable install of the checkout (its own
    # .pth hook) is not loaded, and keras_secondorder can only come from the wheel.
    site_packages = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                         "['purelib'])"], cwd=tmp_path).strip()
    pathlib.Path(site_packages, "dependencies.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n")
    located = run([str(python), "-c",
                   "import keras_secondorder; print(keras_secondorder.__file__)"], cwd=tmp_path)
    assert pathlib.Path(located.strip()).is_relative_to(venv)
    keras.utils.set_random_seed(0)
    models.lenet5().save(tmp_path / "lenet5.keras")
    printout = run([str(venv / "bin" / "keras-secondorder-export"), "lenet5.keras", "--name",
                    "lenet5", "--base-dir", "serving", "--verify-images", "32"], cwd=tmp_path)
    assert "Verified with TensorFlow only on 32 test images" in printout
    assert (tmp_path / "serving" / "lenet5" / "1" / "saved_model.pb").is_file()
