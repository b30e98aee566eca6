"""ml.learn.serving: the pyfunc entry point that MLflow loads."""

from __future__ import annotations

import warnings

from ml.learn.serving import pyfunc_model


def test_the_pyfunc_model_is_built_without_mlflow_warnings():
    """MLflow warns at every load of a PythonModel whose `predict` has no type hint on its
    input; a hint it infers a schema from would replace the logged TensorSpec. `np.ndarray` is
    neither."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pyfunc_model()
    assert [str(w.message) for w in caught] == []
