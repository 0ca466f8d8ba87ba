"""The JAX backend beside TensorFlow: numerical agreement, training without TensorFlow, serving what JAX trained.

Each backend runs in its own process (Keras fixes the backend at import). The JAX processes block TensorFlow
(`import tensorflow` fails there, as on a machine without it), so they also check that the models, the registry
and the numpy dataset file need nothing of TensorFlow.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.tensorflow_only  # runs the JAX side in subprocesses; the parent is the TensorFlow one

ROOT = Path(__file__).resolve().parents[1]
#: Largest absolute difference accepted between the logits of the two backends on the same weights (float32;
#: measured: at most 4e-7 on logits up to 1.6).
LOGIT_ATOL = 1e-5
K = 5


def run_python(args: list[str], backend: str, tmp_path: Path, block_tensorflow: bool = False) -> str:
    """Runs `python *args` from the project root under a Keras backend; returns its output, failing on an error."""
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
    if block_tensorflow:
        site = tmp_path / "no_tensorflow"
        site.mkdir(exist_ok=True)
        # A `None` entry in sys.modules makes `import tensorflow` raise ImportError, as where it is not installed.
        (site / "sitecustomize.py").write_text('import sys\nsys.modules["tensorflow"] = None\n')
        env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_models_import_and_build_without_tensorflow(tmp_path):
    script = """
import sys
import keras
import tfsidefuse
from tfsidefuse.data.numpy_export import load_numpy  # noqa: F401
from tfsidefuse.models.registry import BACKBONES, build_model
sys.path.insert(0, "tests")
from backend_agreement import INPUTS, SCHEMA, SIZES, item_feature_tables

assert sys.modules.get("tensorflow", None) is None and keras.backend.backend() == "jax"
lazy = tfsidefuse._TENSORFLOW_NAMES
missing = [name for name in tfsidefuse.__all__ if name not in lazy and not hasattr(tfsidefuse, name)]
assert not missing, missing
for name in ("train", "export_model", "PreparedDataset"):
    try:
        getattr(tfsidefuse, name)
    except ImportError as err:
        assert "tensorflow" in str(err), err
    else:
        raise AssertionError(f"tfsidefuse.{name} without TensorFlow")
model = build_model("difsr", dict(SIZES), schema=SCHEMA, item_feature_tables=item_feature_tables())
assert tuple(model(INPUTS).shape) == (3, SCHEMA.num_items)
print("built without tensorflow")
"""
    assert "built without tensorflow" in run_python(["-c", script], "jax", tmp_path, block_tensorflow=True)


def test_every_model_gives_the_same_logits_on_both_backends(tmp_path):
    """Every registered model: saved under JAX and loaded under TensorFlow, and built under each with the same
    weights, the logits (last position and every position) agree within LOGIT_ATOL."""
    jax_dir, tf_dir = tmp_path / "jax", tmp_path / "tensorflow"
    # The JAX process builds every registered model with TensorFlow blocked.
    output = run_python(["tests/backend_agreement.py", str(jax_dir)], "jax", tmp_path, block_tensorflow=True)
    assert "jax: 10 models, tensorflow not imported" in output, output
    run_python(["tests/backend_agreement.py", str(tf_dir), str(jax_dir)], "tensorflow", tmp_path)
    with (
        np.load(jax_dir / "logits.npz") as jax_logits,
        np.load(tf_dir / "logits.npz") as tf_logits,
        np.load(tf_dir / "loaded_logits.npz") as loaded,
    ):
        from tfsidefuse.models.registry import BACKBONES

        assert sorted(jax_logits.files) == sorted(f"{name}.{kind}" for name in BACKBONES for kind in ("last", "all"))
        for key in jax_logits.files:
            reference = jax_logits[key]
            real = reference > -1e8  # the reserved ids carry the excluded logit on both sides
            assert real.sum() > 0.8 * real.size
            # Not near zero: the weights are random, so a mismatch of any layer shows.
            assert np.abs(reference[real]).max() > 0.1, key
            np.testing.assert_allclose(loaded[key], reference, rtol=0, atol=LOGIT_ATOL, err_msg=f"loaded {key}")
            np.testing.assert_allclose(tf_logits[key], reference, rtol=0, atol=LOGIT_ATOL, err_msg=f"built {key}")


def test_trained_under_jax_served_by_tensorflow(tmp_path):
    """A prepared dataset as .npz, trained by benchmarks/jax_train.py without TensorFlow, loaded under TensorFlow
    and exported: the SavedModel serves the top-K of the JAX model (ids equal, scores within 1e-5)."""
    import tensorflow as tf

    from tfsidefuse.config import RunConfig
    from tfsidefuse.data.numpy_export import export_numpy, load_numpy
    from tfsidefuse.data.prepared import ITEM_ID
    from tfsidefuse.export import export_model
    from tfsidefuse.training.trainer import prepare

    config = RunConfig.from_dict(
        {
            "dataset": {
                "source": "demo",
                "prepared_dir": str(tmp_path / "data"),
                "max_len": 10,
                "num_shards": 1,
                "demo": {"num_users": 150, "num_items": 50, "seed": 3},
            },
            "model": {
                "name": "sasrec_f",
                "features": ["category", "brand", "action"],
                "hidden_dim": 16,
                "num_layers": 1,
                "num_heads": 2,
                "ff_dim": 32,
            },
            "training": {"run_dir": str(tmp_path / "unused"), "epochs": 2, "batch_size": 32, "ema_momentum": 0.9},
        }
    )
    prepared = prepare(config)
    data_file = export_numpy(prepared, tmp_path / "demo.npz", config=config.to_dict())
    data = load_numpy(data_file)
    assert data.schema == prepared.schema and data.fingerprint == prepared.fingerprint
    assert sorted(data.item_feature_tables) == ["brand", "category"]
    train_inputs, train_labels = data.splits["train"]
    assert train_labels.shape == train_inputs["item_ids"].shape == (150, 10)
    # Left-padded windows: the label of a real slot is the next slot's item; padded slots have none.
    ids = train_inputs["item_ids"]
    np.testing.assert_array_equal(train_labels[:, :-1][ids[:, :-1] != 0], ids[:, 1:][ids[:, :-1] != 0])
    assert np.all(train_labels[ids == 0] == 0) and np.all(train_labels[:, -1] != 0)

    run_dir = tmp_path / "jax-run"
    script = f"""
import runpy, sys
import numpy as np
import keras
import tfsidefuse  # noqa: F401
from tfsidefuse.data.numpy_export import load_numpy

jax_train = runpy.run_path("benchmarks/jax_train.py")
assert jax_train["main"](["--data", {str(data_file)!r}, "--out", {str(run_dir)!r}, "--target", "0.0"]) == 0
inputs = {{k: v[:16] for k, v in load_numpy({str(data_file)!r}).splits["test"][0].items()}}
model = keras.models.load_model({str(run_dir / "model.keras")!r})
scores, ids = model.top_k(inputs, k={K})
np.savez({str(tmp_path / "jax_top_k.npz")!r}, scores=np.asarray(scores), ids=np.asarray(ids), **inputs)
"""
    output = run_python(["-c", script], "jax", tmp_path, block_tensorflow=True)
    assert "devices: cpu" in output and "epoch   2:" in output and "first after epoch 1" in output, output

    base = export_model(run_dir, tmp_path / "models", k=K, prepared_dir=prepared.directory, warmup=0)
    serving = tf.saved_model.load(base).signatures["serving_default"]
    with np.load(tmp_path / "jax_top_k.npz") as top:
        items = np.array(prepared.vocabulary(ITEM_ID), dtype=object)
        actions = np.array(prepared.vocabulary("action"), dtype=object)
        request = {
            "item_ids": np.where(top["item_ids"] == 0, "", items[top["item_ids"]]).astype(str),
            "action": np.where(top["item_ids"] == 0, "", actions[top["action"]]).astype(str),
        }
        served = serving(**{k: tf.constant(v) for k, v in request.items()})
        np.testing.assert_array_equal(served["item_ids"].numpy().astype(str), items[top["ids"]].astype(str))
        np.testing.assert_allclose(served["scores"].numpy(), top["scores"], rtol=0, atol=1e-5)
