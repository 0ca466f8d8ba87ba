"""The TensorFlow C++ API (as TF Serving uses it) loads the export and replays its warm-up requests."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from serving_helpers import MODEL_PARAMS

from tfsidefuse.export import read_warmup_file

ROOT = Path(__file__).resolve().parents[2]
LIB = tf.sysconfig.get_lib()


@pytest.fixture(scope="session")
def runner(tmp_path_factory):
    """saved_model_runner built against the installed wheel (about 20-60 s)."""
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        pytest.skip("no C++ compiler")
    if not os.path.exists(os.path.join(LIB, "libtensorflow_cc.so.2")):
        pytest.skip("the tensorflow wheel has no libtensorflow_cc.so.2")
    out = tmp_path_factory.mktemp("cpp") / "saved_model_runner"
    env = {**os.environ, "PYTHON": sys.executable}
    build = subprocess.run(
        ["bash", str(ROOT / "export" / "cpp" / "build.sh"), str(out)], capture_output=True, text=True, env=env
    )
    assert build.returncode == 0, build.stderr[-4000:]
    return str(out)


def parse_replay(text: str) -> list[dict]:
    """The runner's replay output: per request, output name -> array."""
    lines = text.splitlines()
    results, i = [], 0
    while i < len(lines):
        if lines[i].startswith("request "):
            results.append({})
        elif lines[i].startswith("error "):
            results[-1]["error"] = lines[i][6:]
        elif lines[i].startswith("output "):
            _, name, dtype, rank, *dims = lines[i].split()
            shape = [int(d) for d in dims[: int(rank)]]
            n = int(np.prod(shape))
            values = lines[i + 1 : i + 1 + n]
            i += n
            array = np.array(values, dtype=object) if dtype == "string" else np.array(values, dtype=np.float64)
            results[-1][name] = array.reshape(shape)
        i += 1
    return results


@pytest.mark.parametrize("name", sorted(MODEL_PARAMS))
def test_cpp_loader_replays_the_warmup_file_like_python(zoo, runner, name):
    export_dir = zoo.export(name)
    warmup = os.path.join(export_dir, "assets.extra", "tf_serving_warmup_requests")
    proc = subprocess.run([runner, "replay", export_dir, warmup], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = parse_replay(proc.stdout)
    requests = read_warmup_file(warmup)
    assert len(got) == len(requests) > 0
    loaded = tf.saved_model.load(export_dir)
    for result, (_, signature, inputs) in zip(got, requests):
        assert "error" not in result, result["error"]
        want = loaded.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
        ids = np.vectorize(bytes.decode, otypes=[object])(want["item_ids"].numpy())
        np.testing.assert_array_equal(result["item_ids"], ids)
        np.testing.assert_allclose(result["scores"], want["scores"].numpy(), rtol=1e-5, atol=1e-6)


def test_cpp_loader_rejects_a_bad_request_with_invalid_argument(zoo, runner, tmp_path):
    from tfsidefuse.export import write_warmup_file

    export_dir = zoo.export("sasrec_f")
    path = str(tmp_path / "bad")
    write_warmup_file(
        path,
        "m",
        [
            (
                "serving_default",
                {"item_ids": np.array(["i3", "i5"], dtype=object), "action": np.array([["view"]], dtype=object)},
            ),
            (
                "serving_default",
                {"item_ids": np.array([["i3", "i5"]], dtype=object), "action": np.array([["view"]], dtype=object)},
            ),
            ("serving_default", {"item_ids": np.array([[3, 5]]), "action": np.array([["view", "buy"]], dtype=object)}),
        ],
    )
    proc = subprocess.run([runner, "replay", export_dir, path], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = parse_replay(proc.stdout)
    assert "input `item_ids` must be a 2-D string tensor [batch, events], got shape [2]" in got[0]["error"]
    assert "input `action` must have the same shape as `item_ids`" in got[1]["error"]
    assert "string" in got[2]["error"] and "int64" in got[2]["error"]
