"""Every product against its dense matrix, on a grid of models and losses (float64)."""

import keras
import pytest
import tensorflow as tf
from conftest import MODELS, make_case, random_like, relative_error

from keras_secondorder import curvature
from keras_secondorder.curvature import dense, kinds, kronecker

PRODUCTS = {
    "hessian": (curvature.hessian_vector_product, dense.hessian, curvature.HessianOperator),
    "ggn": (curvature.gauss_newton_vector_product, dense.ggn, curvature.GGNOperator),
    "fisher": (curvature.fisher_vector_product, dense.empirical_fisher, curvature.FisherOperator),
    "kfac": (curvature.kronecker_vector_product, kronecker.dense_matrix,
             curvature.KroneckerFactoredOperator),
}
GRID = [(kind, loss) for kind in MODELS for loss in ("ce", "bce", "mse")] + [
    ("mlp", "sparse_ce_logits"), ("cnn", "sparse_ce_logits")]


@pytest.mark.parametrize("kind,loss_name", GRID)
@pytest.mark.parametrize("product", sorted(PRODUCTS))
def test_product_equals_dense_matrix_times_vector(float64, kind, loss_name, product):
    model, x, y, sample_weight = make_case(kind, loss_name)
    vector_product, reference, _ = PRODUCTS[product]
    vector = random_like(model)
    actual = curvature.flatten(vector_product(model, x, y, vector, sample_weight))
    matrix = reference(model, x, y, sample_weight)
    expected = tf.linalg.matvec(matrix, curvature.flatten(vector))
    assert relative_error(actual, expected) <= 1e-10
    assert relative_error(tf.transpose(matrix), matrix) <= 1e-12  # Symmetric.


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("product", sorted(PRODUCTS))
def test_batchnorm_dropout_in_both_modes(float64, product, training):
    model, x, y, sample_weight = make_case("bn_dropout", "ce")
    vector_product, reference, _ = PRODUCTS[product]
    vector = random_like(model)
    actual = curvature.flatten(vector_product(model, x, y, vector, sample_weight,
                                              training=training))
    expected = tf.linalg.matvec(reference(model, x, y, sample_weight, training=training),
                                curvature.flatten(vector))
    assert relative_error(actual, expected) <= 1e-10


def test_training_mode_changes_the_curvature(float64):
    # BatchNorm batch statistics and dropout make a different objective in training mode.
    model, x, y, sample_weight = make_case("bn_dropout", "ce")
    vector = random_like(model)
    inference, training = (
        curvature.flatten(curvature.hessian_vector_product(model, x, y, vector, sample_weight,
                                                           training=mode))
        for mode in (False, True))
    assert relative_error(training, inference) > 1e-2


@pytest.mark.parametrize("kind", ["mlp", "cnn", "bn_dropout"])
@pytest.mark.parametrize("central", [False, True])
def test_finite_difference_matches_exact(float64, kind, central):
    # In training mode: the same dropout masks and BatchNorm statistics must enter both gradients.
    model, x, y, sample_weight = make_case(kind, "ce")
    vector = random_like(model)
    exact = curvature.hessian_vector_product(model, x, y, vector, sample_weight, training=True)
    approximate = curvature.finite_difference_hessian_vector_product(
        model, x, y, vector, sample_weight, central=central, training=True)
    assert relative_error(curvature.flatten(approximate), curvature.flatten(exact)) <= 1e-3


@pytest.mark.parametrize("product", sorted(PRODUCTS))
def test_operator_to_dense_and_list_matvec(float64, product):
    model, x, y, sample_weight = make_case("multi_input", "ce")
    _, reference, operator_class = PRODUCTS[product]
    operator = operator_class(model, (x, y, sample_weight))
    matrix = reference(model, x, y, sample_weight)
    assert operator.shape == matrix.shape
    assert relative_error(operator.to_dense(), matrix) <= 1e-10
    vector = random_like(model)
    as_list = operator.matvec(vector)
    assert [tuple(p.shape) for p in as_list] == [tuple(v.shape) for v in model.trainable_variables]
    assert relative_error(curvature.flatten(as_list),
                          tf.linalg.matvec(matrix, curvature.flatten(vector))) <= 1e-10


def test_operator_averages_batches_by_size(float64):
    # Two batches of 6 and 3 examples: the size-weighted average equals the operator on all 9.
    model, x, y, _ = make_case("mlp", "ce", batch=9)
    whole = curvature.GGNOperator(model, (x, y)).to_dense()
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(6)
    averaged = curvature.GGNOperator(model, dataset).to_dense()
    assert relative_error(averaged, whole) <= 1e-10
    listed = curvature.GGNOperator(model, [(x[:6], y[:6]), (x[6:], y[6:])]).to_dense()
    assert relative_error(listed, whole) <= 1e-10


def test_damped_operator_works_with_tf_linalg_conjugate_gradient(float64):
    # G + I is positive definite, and says so: tf.linalg's CG accepts it and solves the system.
    model, x, y, _ = make_case("mlp", "ce")
    damped = curvature.GGNOperator(model, (x, y), damping=1.0)
    assert damped.is_positive_definite and damped.is_self_adjoint
    rhs = curvature.flatten(random_like(model))
    solution = tf.linalg.experimental.conjugate_gradient(damped, rhs, tol=1e-12, max_iter=200).x
    assert relative_error(damped.matvec(solution), rhs) <= 1e-8
    undamped = curvature.GGNOperator(model, (x, y)).to_dense()
    assert relative_error(damped.to_dense(), undamped + tf.eye(undamped.shape[0],
                                                               dtype=undamped.dtype)) <= 1e-12
    assert float(tf.reduce_min(tf.linalg.eigvalsh(undamped))) >= -1e-10  # PSD.
    assert curvature.HessianOperator(model, (x, y), damping=1.0).is_positive_definite is None


def test_block_of_variables_is_the_dense_diagonal_block(float64):
    model, x, y, sample_weight = make_case("mlp", "ce")
    full = dense.hessian(model, x, y, sample_weight)
    block_variables = model.layers[-1].trainable_variables
    start = sum(v.numpy().size for v in model.layers[0].trainable_variables)
    block = curvature.HessianOperator(model, (x, y, sample_weight),
                                      variables=block_variables).to_dense()
    assert relative_error(block, full[start:, start:]) <= 1e-10


def test_operator_follows_the_weights(float64):
    # The product reads the variables when it runs: after the weights move, a reused operator
    # equals a freshly built one.
    model, x, y, _ = make_case("mlp", "ce")
    operator = curvature.HessianOperator(model, (x, y))
    vector = curvature.flatten(random_like(model))
    before = operator.matvec(vector)
    for variable in model.trainable_variables:
        variable.assign(variable * 1.5)
    after = operator.matvec(vector)
    fresh = curvature.HessianOperator(model, (x, y)).matvec(vector)
    assert relative_error(after, fresh) <= 1e-12
    assert relative_error(after, before) > 1e-2


def test_the_grid_covers_every_registered_kind():
    # A new kind registered in curvature.kinds must join PRODUCTS, and so every test above.
    assert sorted(PRODUCTS) == sorted(kinds.names())
    for name, (_, reference, operator_class) in PRODUCTS.items():
        kind = kinds.get(name)
        assert kind.operator is operator_class and kind.dense is reference


@pytest.mark.parametrize("product", sorted(PRODUCTS))
def test_batch_curvature_product_by_kind_equals_dense_matrix(float64, product):
    # BatchCurvature (what the train step hands an optimizer) looks the kind up by name.
    model, x, y, sample_weight = make_case("bn_dropout", "ce")
    _, reference, _ = PRODUCTS[product]
    vector = random_like(model)
    actual = curvature.BatchCurvature(model, (x, y, sample_weight)).product(product, vector)
    expected = tf.linalg.matvec(reference(model, x, y, sample_weight, training=True),
                                curvature.flatten(vector))
    assert relative_error(curvature.flatten(actual), expected) <= 1e-10


def test_unknown_or_repeated_kinds_are_refused():
    with pytest.raises(ValueError, match=r"`curvature` must be one of \[.*'ggn'.*\]; received "
                                         r"'newton'"):
        kinds.get("newton")
    with pytest.raises(ValueError, match=r"must be one of \['ggn'\] \(registered kinds: .*"
                                         r"fisher.*\); received 'fisher'"):
        kinds.get("fisher", allowed=("ggn",))
    with pytest.raises(ValueError, match="'ggn' is registered already"):
        kinds.register("ggn", curvature.GGNOperator, dense.ggn)


@pytest.mark.parametrize("kind", MODELS)
def test_gauss_newton_quadratic_forms_equal_the_dense_matrix(float64, kind):
    # Forward mode only: [v_iᵀ G v_j] = Vᵀ G V, the L2 penalty's Hessian included.
    model, x, y, sample_weight = make_case(kind, "ce", regularizer=keras.regularizers.L2(0.1))
    vectors = [random_like(model, seed) for seed in (1, 2, 3)]
    forms = curvature.batch.gauss_newton_quadratic_forms(
        curvature.Objective(model), curvature.Batch(x, y, sample_weight), vectors)
    columns = tf.stack([curvature.flatten(v) for v in vectors], axis=1)
    expected = tf.transpose(columns) @ dense.ggn(model, x, y, sample_weight) @ columns
    assert relative_error(forms, expected) <= 1e-10


@pytest.mark.parametrize("kind,loss_name", GRID)
def test_gauss_newton_matrix_equals_the_dense_one(float64, kind, loss_name):
    # SᵀS from the output Hessians' square-root columns, plus the L2 penalty's diagonal,
    # against the reference from nested jacobians of Keras's own loss (training mode).
    model, x, y, weights = make_case(kind, loss_name, regularizer=keras.regularizers.L2(0.05))
    matrix = curvature.BatchCurvature(model, (x, y, weights)).gauss_newton_matrix()
    expected = dense.ggn(model, x, y, weights, training=True)
    assert relative_error(matrix, expected) <= 1e-10
