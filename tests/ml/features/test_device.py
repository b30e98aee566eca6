"""An explicit CUDA device fails loudly where CUDA is not usable (GPU pods ask for it)."""

from __future__ import annotations

import pytest
import torch

from ml.features.encoders import resolve_device


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a usable GPU")
def test_cuda_without_a_gpu_fails_instead_of_running_on_cpu():
    with pytest.raises(RuntimeError, match="CUDA is not usable"):
        resolve_device("cuda")
    with pytest.raises(RuntimeError, match="CUDA is not usable"):
        resolve_device("cuda:1")
    assert resolve_device("auto") == "cpu"
    assert resolve_device("cpu") == "cpu"
