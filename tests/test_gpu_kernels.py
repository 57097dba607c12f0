"""On a CUDA GPU: the Triton kernels against the CPU reference, bitwise determinism, opcheck on
CUDA tensors, wild indices, and the timm adapter's exactness. Every test needs a GPU
(marker `gpu`); `make gpu-check` runs them. On CPU the same kernels are tested under
Triton's interpreter in tests/test_plugins.py."""

import pytest
import torch

from tokcomp.plugins_cuda import triton_available
from tokcomp.reducers import ops as reference

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(not triton_available(), reason="triton is not installed (pip install triton)"),
]

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 2e-2}
# (batch, tokens, width, merged): widths around the 128-channel block, odd token counts, r = 0 and r = N/2
SHAPES = [(1, 5, 1, 0), (3, 37, 70, 9), (2, 197, 128, 13), (4, 257, 384, 64), (2, 197, 769, 98), (64, 197, 768, 13)]


def _case(batch, tokens, width, merged, dtype, index_dtype, seed=0):
    """t (made non-contiguous), and a ToMe-shaped index merge: N - r tokens kept, r moved into
    output rows dst (shared destinations included)."""
    generator = torch.Generator().manual_seed(seed)
    t = torch.randn(batch, width, tokens, generator=generator).to(dtype).transpose(1, 2)  # a strided view
    order = torch.stack([torch.randperm(tokens, generator=generator) for _ in range(batch)])
    src, kept = order[:, :merged], order[:, merged:].sort(dim=-1).values
    dst = torch.randint(0, tokens - merged, (batch, merged), generator=generator)
    return t, *(x.to(index_dtype) for x in (kept, src, dst))


def _crowded(kept, dst):
    """The same sources merged into only the first eighth of the kept rows: many sources per output row."""
    few = kept[:, : max(1, kept.shape[1] // 8)]
    return few, dst % few.shape[1]


def _cuda(*tensors):
    return [x.cuda() for x in tensors]


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64], ids=["i32", "i64"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"b{b}n{n}d{d}r{r}" for b, n, d, r in SHAPES])
def test_kernels_match_the_cpu_reference(shape, dtype, index_dtype):
    from tokcomp.plugins_cuda import triton_kernels as kernels

    t, kept, src, dst = _case(*shape, dtype, index_dtype)
    tol = TOLERANCE[dtype]
    for rows, into in ((kept, dst), _crowded(kept, dst)):
        want = reference.index_merge_sum_reference(t.float(), rows.long(), src.long(), into.long())
        got = kernels.index_merge(*_cuda(t, rows, src, into))
        assert got.dtype == dtype
        torch.testing.assert_close(got.float().cpu(), want, atol=tol * max(1.0, want.abs().max().item()), rtol=tol)

    got = kernels.gather_tokens(*_cuda(t, kept))
    assert torch.equal(got.cpu(), reference.gather_tokens_reference(t, kept.long()))  # a copy is exact


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_merges_are_bitwise_deterministic(dtype):
    """Gather-side sums in a fixed order, no atomics: the same inputs give the same bits every time."""
    from tokcomp.plugins_cuda import triton_kernels as kernels

    t, kept, src, dst = _cuda(*_case(64, 257, 768, 100, dtype, torch.int64, seed=5))
    few, into = _crowded(kept, dst)
    cases = [(t, kept, src, dst), (t, few, src, into)]
    first = [kernels.index_merge(*args) for args in cases]
    for _ in range(3):
        assert all(torch.equal(kernels.index_merge(*args), want) for args, want in zip(cases, first, strict=True))


def test_wild_indices_stay_in_bounds():
    """TensorRT times plugins on uninitialised buffers: any index value must not fault the GPU."""
    from tokcomp.plugins_cuda import triton_kernels as kernels

    t = torch.randn(8, 197, 384, device="cuda", dtype=torch.float16)

    def wild(*shape):
        return torch.randint(-(2**62), 2**62, shape, device="cuda")

    kernels.gather_tokens(t, wild(8, 50))
    kernels.index_merge(t, wild(8, 184), wild(8, 13), wild(8, 13))  # ToMe's r = 13
    kernels.index_merge(t, wild(8, 100), wild(8, 40), wild(8, 40))
    torch.cuda.synchronize()  # an illegal address would raise here


@pytest.mark.parametrize("name", ["gather_tokens", "index_merge_sum"])
def test_custom_ops_pass_opcheck_on_cuda(name):
    from tokcomp.plugins_cuda.ops import TOKEN_OPS

    t, kept, src, dst = _cuda(*_case(3, 37, 70, 9, torch.float32, torch.int64))
    args = {"gather_tokens": (t, kept), "index_merge_sum": (t, kept, src, dst)}[name]
    torch.library.opcheck(TOKEN_OPS[name], args)  # schema, fake impl, CUDA dispatch, autograd registration
    want = reference.REFERENCE_OPS[name](*(a.cpu() for a in args))
    torch.testing.assert_close(TOKEN_OPS[name](*args).cpu(), want, atol=1e-5, rtol=1e-5)


def test_timm_vit_rewrite_is_exact_on_cuda():
    """tokcomp's timm adapter at r = 0 computes what timm computes, on the GPU, in full fp32."""
    timm = pytest.importorskip("timm", reason="timm is an optional extra")
    import tokcomp
    from tokcomp.export.validate import full_fp32

    model = timm.create_model(
        "vit_small_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=3, init_values=0.1, qk_norm=True
    )
    model = model.cuda().eval()
    pixels = torch.randn(4, 3, 32, 32, device="cuda")
    with torch.no_grad(), full_fp32():
        expected = model(pixels)
        tokcomp.apply(model, [{"type": "tome", "r": 0}])
        got = model(pixels)
    assert (expected - got).abs().max().item() <= 1e-5
