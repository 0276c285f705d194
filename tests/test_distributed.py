"""tf.distribute: curvature is reduced across replicas, so training matches one device."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).with_name("distributed_run.py")
ROOT = SCRIPT.parent.parent


def run(output, mode, env=None, wait=True):
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    process = subprocess.Popen([sys.executable, str(SCRIPT), str(output), mode], env=environment,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if wait:
        return finish(process)
    return process


def finish(process, timeout=600):
    try:
        out, _ = process.communicate(timeout=timeout)
    finally:
        process.kill()
    assert process.returncode == 0, out[-3000:]


def assert_same_training(actual, expected, keys=None):
    actual, expected = np.load(actual), np.load(expected)
    if keys is None:  # Everything the reference recorded, and nothing else.
        assert sorted(actual.files) == sorted(expected.files)
        keys = expected.files
    else:
        assert set(keys) <= set(actual.files), sorted(set(keys) - set(actual.files))
    for key in keys:
        tight = expected[key].dtype == np.float64
        np.testing.assert_allclose(actual[key], expected[key], rtol=1e-10 if tight else 2e-5,
                                   atol=1e-12 if tight else 2e-6, err_msg=key)


def test_mirrored_strategy_on_two_devices_matches_one_device(tmp_path):
    # Includes a conv net with a synchronized BatchNormalization in training mode (bn_esgd_*).
    run(tmp_path / "single.npz", "single")
    run(tmp_path / "mirrored.npz", "mirrored")
    assert_same_training(tmp_path / "mirrored.npz", tmp_path / "single.npz")


def test_curvature_that_cannot_all_reduce_batch_norm_moments_is_refused(tmp_path):
    # Per-example diagonals (SDLM) and HessianFree's cross-replica CG loop cannot all-reduce a
    # synchronized BatchNormalization's moments: each says so, naming the layer and the fixes.
    run(tmp_path / "errors.json", "refusals")
    errors = json.loads((tmp_path / "errors.json").read_text())
    assert sorted(errors) == ["hf", "sdlm"]
    for message in errors.values():
        assert "synchronized BatchNormalization layers ['global_moments']" in message
        assert "BatchNormalization(synchronized=False)" in message and "one device" in message
    assert errors["sdlm"].startswith("The 'ggn' curvature diagonal cannot be taken across 2")
    assert errors["hf"].startswith("HessianFree runs its CG loop over the 2 replicas' batches")


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_multi_worker_mirrored_strategy_with_two_local_workers(tmp_path):
    run(tmp_path / "single.npz", "single")
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    processes = []
    try:
        for index in range(2):
            config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
            processes.append(run(tmp_path / f"worker{index}.npz", "multiworker",
                                 env={"TF_CONFIG": json.dumps(config)}, wait=False))
        for process in processes:
            finish(process)
    finally:
        for process in processes:
            process.kill()
    # The weights: the workers log their loss from a custom loop, not fit's (see the script).
    weights = [key for key in np.load(tmp_path / "single.npz").files
               if "loss" not in key and not key.startswith(("hf", "bn"))]
    for index in range(2):
        assert_same_training(tmp_path / f"worker{index}.npz", tmp_path / "single.npz", weights)
