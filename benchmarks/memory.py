"""Memory measures for the benchmarks: what autograd saves for backward, and CUDA peak memory."""

import torch


def saved_tensor_bytes(fn, *args, **kwargs) -> int:
    """Bytes of the distinct tensors autograd saves for backward while running ``fn(*args, **kwargs)``."""
    seen = {}

    def pack(t):
        key = (t.untyped_storage().data_ptr(), t.dtype, tuple(t.shape), t.storage_offset())
        seen[key] = t.untyped_storage().nbytes() if t.numel() else 0
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args, **kwargs)
    by_storage = {}
    for (ptr, *_), nbytes in seen.items():
        by_storage[ptr] = max(by_storage.get(ptr, 0), nbytes)
    return sum(by_storage.values())


def cuda_peak_bytes(fn, *args, **kwargs) -> int:
    """Peak CUDA memory allocated above the starting point while running ``fn`` (CUDA only)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    fn(*args, **kwargs)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - start
