"""model.dtype: auto picks bf16 only where it measured faster: a bf16 GPU, or a bf16 CPU and a wide enough model."""

import pytest
import torch

from rlhflab.errors import UserError
from rlhflab.models import loading
from rlhflab.models.loading import BF16_CPU_MIN_WIDTH, hidden_size, resolve_dtype

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    "has_bf16, width, expected",
    [
        (True, BF16_CPU_MIN_WIDTH, torch.bfloat16),
        (True, 576, torch.bfloat16),
        (True, 128, torch.float32),  # the demo model's width: bf16 measured slower
        (True, None, torch.float32),  # width unknown
        (False, 1024, torch.float32),  # no bf16 instructions
    ],
)
def test_auto_dtype_on_a_cpu(monkeypatch, has_bf16, width, expected):
    monkeypatch.setattr(loading, "cpu_has_bf16", lambda: has_bf16)
    assert resolve_dtype("auto", CPU, width) is expected


def test_explicit_dtypes_are_kept_and_a_bad_one_is_named(monkeypatch):
    monkeypatch.setattr(loading, "cpu_has_bf16", lambda: True)
    assert resolve_dtype("fp32", CPU, 4096) is torch.float32
    assert resolve_dtype("bf16", CPU, 8) is torch.bfloat16
    with pytest.raises(UserError, match="'float8'"):
        resolve_dtype("float8", CPU)


def test_hidden_size_is_read_from_the_config(tiny_model_dir, tmp_path):
    assert hidden_size(str(tiny_model_dir)) == 32
    assert hidden_size(str(tmp_path / "missing")) is None
