"""The Triton seeded dropout against the reference: the same masks bit for bit, gradients, opcheck.

Runs on the one device ``triton_devices()`` gives: the CPU under the Triton interpreter (small shapes), or CUDA
with a GPU and the interpreter off. Inputs are drawn on the CPU from seeds, then moved.
"""
import os
import sys

import pytest
import torch

if not torch.cuda.is_available() and "helo_fast.kernels.sinkhorn" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import helo_fast as hf  # noqa: E402
from helo_fast.reference.dropout import seeded_dropout as reference_dropout  # noqa: E402
from devices import seeded_weights, triton_module_device  # noqa: E402

DEVICE, _MARKS = triton_module_device("seeded_dropout")
pytestmark = _MARKS


def draw(shape, dtype, seed=0):
    return seeded_weights(seed, *shape, device=DEVICE).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", [(3, 37, 129), (2, 1025), (1,), (0, 4)], ids=str)
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_triton_matches_reference_bit_for_bit(dtype, shape, p):
    x = draw(shape, dtype)
    out = hf.seeded_dropout(x, p, generator=torch.Generator().manual_seed(4), backend="triton")
    ref = reference_dropout(x, p, generator=torch.Generator().manual_seed(4))
    assert out.dtype == dtype and out.shape == x.shape
    assert torch.equal(out, ref)


def test_triton_gradient_is_the_same_mask_times_the_scale():
    x = draw((6, 70), torch.float64).t().requires_grad_(True)  # non-contiguous
    weight = draw((70, 6), torch.float64, seed=1)
    out = hf.seeded_dropout(x, 0.3, generator=torch.Generator().manual_seed(8), backend="triton")
    (out * weight).sum().backward()
    ref = reference_dropout(x.detach(), 0.3, generator=torch.Generator().manual_seed(8))
    assert torch.equal(out.detach(), ref)
    assert torch.equal(x.grad, torch.where(ref != 0, weight * (1.0 / 0.7), 0.0))


def test_opcheck_custom_op():
    x = draw((5, 7), torch.float32)
    seed = torch.tensor([12], dtype=torch.int64)
    torch.library.opcheck(torch.ops.helo_fast.triton_seeded_dropout_fwd, (x, seed, 0.4))
    torch.library.opcheck(torch.ops.helo_fast.triton_seeded_dropout_fwd, (x.clone().requires_grad_(), seed, 0.4))
