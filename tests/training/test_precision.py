"""helo_fast.training.precision: where bf16-mixed is slower than float32 (a CPU without native bfloat16) it warns
once."""

import warnings

import pytest
import torch

from helo_fast.training import precision

CPU = torch.device("cpu")


@pytest.fixture
def fresh_warning_state(monkeypatch):
    monkeypatch.setattr(precision, "_warned_slow_bf16", False)


def test_bf16_mixed_on_a_cpu_without_native_bf16_warns_once_naming_the_feature(monkeypatch, fresh_warning_state):
    monkeypatch.setattr(precision, "native_cpu_bf16", lambda: False)
    with pytest.warns(UserWarning) as caught:
        precision.check_precision("--precision", "bf16-mixed", CPU)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert message.startswith("--precision bf16-mixed: ")
    assert "AVX512-BF16" in message and "AMX-BF16" in message and "float32 (--precision 32)" in message
    assert "faster" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        precision.check_precision("--precision", "bf16-mixed", CPU)  # the second time: silent


@pytest.mark.parametrize(
    "native, device, name", [(True, CPU, "bf16-mixed"), (False, CPU, "32"), (False, torch.device("cuda"), "bf16-mixed")]
)
def test_no_warning_where_bf16_is_native_or_not_used(monkeypatch, fresh_warning_state, native, device, name):
    monkeypatch.setattr(precision, "native_cpu_bf16", lambda: native)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        precision.check_precision("--precision", name, device)
    assert precision.slow_bf16_reason(device) is None or name == "32"


def test_native_cpu_bf16_is_the_onednn_capability():
    assert precision.native_cpu_bf16() == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
