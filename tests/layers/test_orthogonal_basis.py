import keras
import numpy as np
import pytest
from helpers import gradients, hidden_inputs, run_layer_test

from tfsidefuse.layers import OrthogonalBasis


def np_qr_basis(kernel: np.ndarray) -> np.ndarray:
    """Thin QR factor with the signs that give `R` a positive diagonal."""
    q, r = np.linalg.qr(kernel.astype("float64"))
    return q * np.where(np.diag(r) < 0, -1.0, 1.0)[None, :]


@pytest.mark.parametrize("mode, trainable", [("qr", 1), ("soft", 1), ("fixed", 0)])
def test_layer_behaviors(tmp_path, mode, trainable):
    run_layer_test(
        OrthogonalBasis,
        {"dim": 8, "rank": 2, "mode": mode},
        hidden_inputs(),
        (2, 6, 2),
        tmp_path,
        expected_num_trainable_weights=trainable,
        expected_num_non_trainable_weights=1 - trainable,
    )


@pytest.mark.parametrize("mode", ["qr", "soft", "fixed"])
def test_starts_orthonormal(mode):
    basis = OrthogonalBasis(8, 3, mode=mode)
    q = np.asarray(basis.basis())  # builds on first use
    assert q.shape == (8, 3) and q.dtype == np.float32
    np.testing.assert_allclose(q.T @ q, np.eye(3), atol=1e-5)
    assert float(basis.orthogonality_penalty()) < 1e-9


def test_qr_basis_matches_numpy_and_stays_orthonormal():
    basis = OrthogonalBasis(8, 3, mode="qr")
    basis.build()
    kernel = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")
    basis.kernel.assign(kernel)
    q = np.asarray(basis.basis())
    np.testing.assert_allclose(q, np_qr_basis(kernel), atol=1e-5)
    np.testing.assert_allclose(q.T @ q, np.eye(3), atol=1e-5)
    x = hidden_inputs()
    np.testing.assert_allclose(np.asarray(basis(x)), x @ np_qr_basis(kernel), atol=1e-5)


def test_soft_basis_is_the_kernel_and_its_penalty():
    basis = OrthogonalBasis(8, 3, mode="soft")
    basis.build()
    kernel = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")
    basis.kernel.assign(kernel)
    np.testing.assert_allclose(np.asarray(basis.basis()), kernel)
    expected = np.sum((kernel.T.astype("float64") @ kernel - np.eye(3)) ** 2)
    np.testing.assert_allclose(float(basis.orthogonality_penalty()), expected, rtol=1e-5)


@pytest.mark.parametrize("mode", ["qr", "soft"])
def test_gradient_flows_into_the_kernel(mode):
    basis = OrthogonalBasis(8, 3, mode=mode)
    basis.build()
    x = hidden_inputs()
    (gradient,) = gradients([basis.kernel], lambda: keras.ops.sum(keras.ops.sin(basis(x))))
    assert gradient is not None and np.any(gradient != 0)


def test_fixed_basis_is_not_trained_and_mixed_precision_keeps_it_float32():
    basis = OrthogonalBasis(8, 3, mode="fixed")
    basis.build()
    assert basis.trainable_weights == [] and len(basis.non_trainable_weights) == 1
    mixed = OrthogonalBasis(8, 3, mode="qr", dtype="mixed_float16")
    outputs = mixed(hidden_inputs())
    assert keras.backend.standardize_dtype(outputs.dtype) == "float16"
    assert keras.backend.standardize_dtype(mixed.basis().dtype) == "float32"


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"dim": 0, "rank": 1}, "dim=0"),
        ({"dim": 8, "rank": 0}, "rank=0"),
        ({"dim": 4, "rank": 5}, "rank=5"),
        ({"dim": 8, "rank": 2, "mode": "svd"}, "mode='svd'"),
    ],
)
def test_invalid_arguments(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        OrthogonalBasis(**kwargs)
