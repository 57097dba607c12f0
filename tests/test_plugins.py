"""tokcomp::* custom ops, the Triton kernels, their AOT PTX, and the TensorRT plugin manifest.

Kernel tests run on a CUDA GPU when there is one; otherwise on the CPU under Triton's
interpreter (TRITON_INTERPRET=1, set before triton is imported), which executes the
same kernel code. Both need triton; without it they skip with the reason.
"""

import os
import sys

import pytest
import torch

import tokcomp
from tests.conftest import tiny_bert, tiny_vision
from tokcomp.reducers import ops as reference
from tokcomp.reducers.ops import use_ops

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first triton import

from tokcomp.plugins_cuda import triton_available  # noqa: E402
from tokcomp.plugins_cuda.ops import TOKEN_OPS  # noqa: E402

DEVICE = "cuda" if CUDA else "cpu"
needs_triton = pytest.mark.skipif(not triton_available(), reason="triton is not installed (pip install triton)")


def _merge_indices(batch: int, tokens: int, r: int, generator: torch.Generator):
    """A ToMe-shaped index merge: N - r tokens kept in index order, r moved into them."""
    order = torch.stack([torch.randperm(tokens, generator=generator) for _ in range(batch)])
    src, kept = order[:, :r], order[:, r:].sort(dim=-1).values
    dst = torch.randint(0, tokens - r, (batch, r), generator=generator)  # shared destinations included
    return kept, src, dst


def _random_case(dtype, batch=3, tokens=37, width=70, r=9, seed=0):
    generator = torch.Generator().manual_seed(seed)
    t = torch.randn(batch, tokens, width, generator=generator).to(dtype)
    return t, *_merge_indices(batch, tokens, r, generator)


TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 2e-2}


# --- custom ops (CPU reference, fake implementations) ------------------------------


def test_every_swappable_step_has_a_custom_op():
    assert set(TOKEN_OPS) == set(reference.REFERENCE_OPS) == {"gather_tokens", "index_merge_sum"}


@pytest.mark.parametrize("name", sorted(TOKEN_OPS))
def test_custom_ops_pass_opcheck_and_equal_the_reference(name):
    t, kept, src, dst = _random_case(torch.float32)
    args = {"gather_tokens": (t, kept), "index_merge_sum": (t, kept, src, dst)}[name]
    torch.library.opcheck(TOKEN_OPS[name], args)  # schema, fake impl, dispatch consistency
    assert torch.equal(TOKEN_OPS[name](*args), reference.REFERENCE_OPS[name](*args))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_row_copies_equal_one_gather_and_one_scatter(dtype, monkeypatch):
    """Eager CPU gathers and adds whole rows of the flattened tensor; GPUs and traced graphs take one
    `gather` / `scatter_add`. Same values, same order of additions: bit-identical."""
    t, kept, src, dst = _random_case(dtype)
    for index in (kept, src, src.flip(-1)[:, :4]):
        rows = reference.gather_tokens_reference(t, index)
        with monkeypatch.context() as patched:
            patched.setattr(reference, "ROW_COPY_DEVICES", ())
            assert torch.equal(rows, reference.gather_tokens_reference(t, index))
        assert torch.equal(rows, t.gather(1, index[..., None].expand(-1, -1, t.shape[-1])))
    merged = reference.index_merge_sum_reference(t, kept, src, dst)
    with monkeypatch.context() as patched:
        patched.setattr(reference, "ROW_COPY_DEVICES", ())
        assert torch.equal(merged, reference.index_merge_sum_reference(t, kept, src, dst))


@pytest.mark.parametrize("null", [False, True])
def test_the_merge_input_buffer_equals_its_concatenation_and_keeps_gradients(null, monkeypatch):
    """`weighted_rows` writes [x w | w | extras | null row] into one buffer on the eager CPU path."""
    from tokcomp.reducers.apply import weighted_rows

    generator = torch.Generator().manual_seed(0)
    x, weight = torch.randn(3, 7, 5, generator=generator), torch.rand(3, 7, generator=generator)
    extras = [x.norm(dim=-1, keepdim=True), torch.rand(3, 7, 7, generator=generator)]
    written = weighted_rows(x, weight, extras, null)
    with monkeypatch.context() as patched:
        patched.setattr(reference, "ROW_COPY_DEVICES", ())
        assert torch.equal(written, weighted_rows(x, weight, extras, null))
    x.requires_grad_(True)  # out= writes do not support autograd: the concatenation runs instead
    weighted_rows(x, weight, extras, null).sum().backward()
    assert torch.equal(x.grad, weight[..., None].expand_as(x))


def test_swapping_ops_keeps_model_outputs_identical(monkeypatch):
    from tokcomp.reducers import apply

    model = tiny_vision("vit")
    tokcomp.apply(model, [{"type": "tome", "r": 4}])
    x = torch.rand(2, 3, 32, 32)
    # swapped ops turn off the eager CPU merge of changed rows only (its own test is below): compare
    # the same arithmetic, so that only the ops differ
    monkeypatch.setattr(apply, "in_place_path", lambda *args: False)
    with torch.inference_mode():
        plain = model(pixel_values=x).logits
        with use_ops(TOKEN_OPS):
            routed = model(pixel_values=x).logits
    assert torch.equal(plain, routed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("matching,merge", [("bipartite", "mean"), ("greedy", "norm_preserving")])
@pytest.mark.parametrize("padded", [False, True])
def test_the_eager_merge_of_changed_rows_equals_the_dense_merge(dtype, matching, merge, padded, monkeypatch):
    """`merge_into_kept_rows` (eager CPU) gives the dense merge's means up to rounding, and its state exactly."""
    from tokcomp.reducers import apply
    from tokcomp.reducers.rate import Rate
    from tokcomp.reducers.tome import ToMe
    from tokcomp.surgery.state import TokenState

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(6, 41, 24, generator=generator).to(dtype)
    lengths = torch.tensor([41, 2, 17, 40, 9, 30])
    real = torch.arange(41)[None] < lengths[:, None] if padded else None
    state = TokenState.initial(x, real, 1, False)
    state = state._replace(size=torch.randint(1, 5, state.size.shape, generator=generator).float())  # merged earlier
    reducer = ToMe(Rate(40, 100), 1, metric="hidden", matching=matching, merge=merge)
    changed_rows, changed_state = reducer(x, state, None)
    monkeypatch.setattr(apply, "in_place_path", lambda *args: False)
    dense, dense_state = reducer(x, state, None)
    assert (changed_state.real is None) == (dense_state.real is None)
    for field in ("size", "real", "protected", "position"):
        if getattr(dense_state, field) is not None:
            assert torch.equal(getattr(changed_state, field), getattr(dense_state, field)), field
    tolerance = {torch.float32: 1e-5, torch.bfloat16: 1e-2}[dtype]  # bf16: one rounding of the result
    torch.testing.assert_close(changed_rows.float(), dense.float(), rtol=tolerance, atol=tolerance)
    if padded:  # rows past a sample's end are empty in both
        assert torch.equal(changed_rows[~changed_state.real], torch.zeros_like(changed_rows[~changed_state.real]))


def test_merges_with_gradients_or_swapped_ops_take_the_dense_path():
    from tokcomp.reducers.apply import in_place_path
    from tokcomp.surgery.state import TokenState

    x = torch.randn(2, 9, 4)
    state = TokenState.initial(x, None, 1, False)
    assert in_place_path(x, state)
    assert not in_place_path(x.requires_grad_(True), state)
    assert not in_place_path(x.detach(), state._replace(size=state.size.requires_grad_(True)))
    with use_ops(TOKEN_OPS):
        assert not in_place_path(x.detach(), TokenState.initial(x, None, 1, False))


@pytest.mark.parametrize("moved", [9, 0])
def test_portable_onnx_steps_equal_the_references(moved):
    """What the portable ONNX export traces (row gathers, a one-hot matmul for the sum) gives the references'
    numbers, null rows (index N of a padded batch) and layers that move nothing included."""
    from tokcomp.export.portable_ops import PORTABLE_OPS

    assert set(PORTABLE_OPS) == set(reference.REFERENCE_OPS)
    t, kept, src, dst = _random_case(torch.float32, tokens=37, r=moved)
    t = torch.cat([t, torch.zeros_like(t[:, :1])], dim=1)  # the null row a padded merge appends
    kept[0, -2:] = src[1, :1] = 37  # an empty padding row, a slot that moves nothing
    for name, args in (("gather_tokens", (t, kept)), ("index_merge_sum", (t, kept, src, dst))):
        want = reference.REFERENCE_OPS[name](*args)
        assert torch.allclose(PORTABLE_OPS[name](*args), want, atol=1e-5), name


def test_use_ops_rejects_unknown_steps_and_restores():
    with pytest.raises(ValueError, match="swappable ops are"):
        with use_ops({"not_an_op": reference.gather_tokens_reference}):
            pass
    with use_ops({"gather_tokens": lambda t, i: t[:, :1]}):
        assert reference.gather_tokens(torch.ones(1, 3, 2), torch.zeros(1, 2, dtype=torch.long)).shape == (1, 1, 2)
    assert reference.gather_tokens(torch.ones(1, 3, 2), torch.zeros(1, 2, dtype=torch.long)).shape == (1, 2, 2)


def test_torch_export_sees_the_custom_ops_as_single_nodes():
    model = tiny_vision("dinov2")
    tokcomp.apply(model, [{"type": "tome", "r": 4}])
    with use_ops(TOKEN_OPS):
        program = torch.export.export(model, (torch.rand(2, 3, 32, 32),))
    targets = [str(node.target) for node in program.graph.nodes if node.op == "call_function"]
    assert [t for t in targets if t.startswith("tokcomp.")] == ["tokcomp.index_merge.default"] * 4  # one per block


# --- kernels vs the CPU reference --------------------------------------------------


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32], ids=["i64", "i32"])
def test_kernels_match_reference_on_random_inputs(dtype, index_dtype):
    from tokcomp.plugins_cuda import triton_kernels as kernels

    t, kept, src, dst = _random_case(dtype, seed=1)
    want = reference.index_merge_sum_reference(t.float(), kept, src, dst)
    got = kernels.index_merge(*(x.to(DEVICE) for x in (t, kept.to(index_dtype), src.to(index_dtype), dst.to(index_dtype))))
    assert got.dtype == dtype and got.shape == want.shape
    torch.testing.assert_close(got.float().cpu(), want, atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])

    index = torch.randint(0, t.shape[1], (3, 11))
    got = kernels.gather_tokens(t.to(DEVICE), index.to(index_dtype).to(DEVICE))
    assert torch.equal(got.cpu(), reference.gather_tokens_reference(t, index))  # a copy is exact

    kept = torch.randint(0, t.shape[1], (3, 8))
    moved = torch.randint(0, t.shape[1], (3, 40))  # R > tile minimum, many sources per row
    into = torch.randint(0, 8, (3, 40))
    want = reference.index_merge_sum_reference(t.float(), kept, moved, into)
    got = kernels.index_merge(*(x.to(DEVICE) for x in (t, kept.to(index_dtype), moved.to(index_dtype), into.to(index_dtype))))
    torch.testing.assert_close(got.float().cpu(), want, atol=4 * TOLERANCE[dtype], rtol=TOLERANCE[dtype])


@needs_triton
def test_kernels_clamp_out_of_range_indices_into_bounds():
    """TensorRT times plugins on uninitialised buffers: a wild index is clamped, never read out of bounds."""
    from tokcomp.plugins_cuda import triton_kernels as kernels

    t = torch.randn(2, 9, 20)
    wild = torch.tensor([[-7, 3, 10**6], [8, -1, 99]])
    got = kernels.gather_tokens(t.to(DEVICE), wild.to(DEVICE)).cpu()
    assert torch.equal(got, reference.gather_tokens_reference(t, wild.clamp(0, 8)))

    moved, into = wild[:, :2], torch.tensor([[0, 2], [1, 1]])  # destinations are output rows (< 3)
    got = kernels.index_merge(*(x.to(DEVICE) for x in (t, wild, moved, into))).cpu()
    torch.testing.assert_close(got, reference.index_merge_sum_reference(t, wild.clamp(0, 8), moved.clamp(0, 8), into))

    # A destination is only compared with the output row: a wild one adds its source nowhere.
    stray = torch.tensor([[0, 10**6], [1, -4]])
    got = kernels.index_merge(*(x.to(DEVICE) for x in (t, wild, moved, stray))).cpu()
    torch.testing.assert_close(got, reference.index_merge_sum_reference(t, wild.clamp(0, 8), moved[:, :1].clamp(0, 8), stray[:, :1]))


def _recorded_merges(model, inputs: dict) -> list[tuple]:
    """The exact (t, kept, src, dst) of every index merge one forward pass of `model` makes."""
    calls = []

    def record(t, kept, src, dst):
        calls.append((t.clone(), kept, src, dst))
        return reference.index_merge_sum_reference(t, kept, src, dst)

    with torch.inference_mode(), use_ops({"index_merge_sum": record}):
        model(**inputs)
    return calls


def _padded_text_merges() -> list[tuple]:
    """ToMe on a batch of 16, 11 and 6 real tokens: slots past a sample's end hold the null index N."""
    model = tokcomp.apply(tiny_bert(), [{"type": "tome", "r": 3}], sequence_length=16)
    ids = torch.randint(5, 200, (3, 16), generator=torch.Generator().manual_seed(0))
    mask = (torch.arange(16) < torch.tensor([[16], [11], [6]])).long()
    return _recorded_merges(model, {"input_ids": ids, "attention_mask": mask})


@needs_triton
def test_kernels_match_reference_on_real_merges():
    """The exact (t, kept, src, dst) ToMe produces, recorded during a forward pass, fp32 and fp16."""
    from tests.test_export import small_vision
    from tokcomp.plugins_cuda import triton_kernels as kernels

    model = small_vision("dinov2")
    tokcomp.apply(model, [{"type": "tome", "r": 4}])
    calls = _recorded_merges(model, {"pixel_values": torch.rand(3, 3, 16, 16)})
    assert len(calls) == 2
    for dtype in (torch.float32, torch.float16):
        for t, kept, src, dst in calls:
            want = reference.index_merge_sum_reference(t.to(dtype).float(), kept, src, dst)
            got = kernels.index_merge(t.to(dtype).to(DEVICE), kept.to(DEVICE), src.to(DEVICE), dst.to(DEVICE))
            scale = want.abs().max().item()
            torch.testing.assert_close(got.float().cpu(), want, atol=TOLERANCE[dtype] * scale, rtol=TOLERANCE[dtype])


@needs_triton
def test_kernels_read_the_null_row_of_a_padded_batch():
    """Index N of a padded batch is the zero row the caller appended: an ordinary index for the kernels."""
    from tokcomp.plugins_cuda import triton_kernels as kernels

    calls = _padded_text_merges()
    assert len(calls) == 3
    for t, kept, src, dst in calls:
        null = t.shape[1] - 1
        assert (kept == null).any() and (src == null).any() and not t[:, null].any()
        want = reference.index_merge_sum_reference(t, kept, src, dst)
        got = kernels.index_merge(t.to(DEVICE), kept.to(DEVICE), src.to(DEVICE), dst.to(DEVICE))
        torch.testing.assert_close(got.cpu(), want, atol=1e-5, rtol=1e-5)
        assert torch.equal(kernels.gather_tokens(t.to(DEVICE), kept.to(DEVICE)).cpu(), reference.gather_tokens_reference(t, kept))


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_dispatch_and_compiled_model_use_the_kernels():
    t, kept, src, dst = _random_case(torch.float16, batch=64, tokens=197, width=386, r=13)
    args = [x.cuda() for x in (t, kept, src, dst)]
    got = torch.ops.tokcomp.index_merge(*args)
    want = reference.index_merge_sum_reference(t.float(), kept, src, dst)
    torch.testing.assert_close(got.float().cpu(), want, atol=2e-2, rtol=2e-2)
    model = tiny_vision("dinov2").cuda()
    tokcomp.apply(model, [{"type": "tome", "r": 4}])
    x = torch.rand(8, 3, 32, 32, device="cuda")
    with torch.inference_mode(), use_ops(TOKEN_OPS):
        eager = model(pixel_values=x).last_hidden_state
        compiled = torch.compile(model)(pixel_values=x).last_hidden_state
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)


# --- ahead-of-time PTX for TensorRT (no GPU needed) --------------------------------


_PTX_CHECK = """
import json
from tokcomp.plugins_cuda import ptx, triton_kernels as kernels
out = []
merge = {"BLOCK_D": kernels.BLOCK_D, "CHUNK": kernels.SOURCE_CHUNK}
for dtype in ("float32", "float16", "bfloat16"):
    for index_dtype in ("int32", "int64"):
        cases = [
            (kernels.index_merge_kernel, ptx.index_merge_signature(dtype, index_dtype), merge),
            (kernels.gather_rows_kernel, ptx.gather_signature(dtype, index_dtype), {"BLOCK_D": kernels.BLOCK_D}),
        ]
        for kernel, signature, constexprs in cases:
            compiled = ptx.compile_kernel(kernel, signature, constexprs, capability=90)
            out.append({
                "name": compiled.name,
                "params": len(ptx.entry_params(compiled.ptx, compiled.name)),
                "signature": len(signature),
                "sm_90": ".target sm_90" in compiled.ptx,
                "warps": compiled.num_warps,
                "registers": ptx.ptxas_registers(compiled.ptx, 90),
            })
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def compiled_for_h100():
    """Every kernel x value dtype x index dtype compiled to sm_90 PTX in a subprocess (the real compiler)."""
    if not triton_available():
        pytest.skip("triton is not installed (pip install triton)")
    import json
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the real compiler, not the interpreter
    result = subprocess.run([sys.executable, "-c", _PTX_CHECK], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_kernels_compile_to_ptx_for_h100_with_exactly_the_tensorrt_arguments(compiled_for_h100):
    """PTX for sm_90 (no GPU needed) whose entry takes exactly (inputs, int32 scalars, output), one name each."""
    assert len(compiled_for_h100) == 3 * 2 * 2  # value dtypes x index dtypes x kernels
    for kernel in compiled_for_h100:
        assert kernel["params"] == kernel["signature"] and kernel["sm_90"] and kernel["warps"] == 4
    names = [kernel["name"] for kernel in compiled_for_h100]
    assert len(set(names)) == len(names)


def test_kernels_fit_in_64_registers_on_sm90(compiled_for_h100):
    """The merge tile has a fixed size whatever the number of sources, so registers stay at or below 64."""
    registers = {kernel["name"]: kernel["registers"] for kernel in compiled_for_h100}
    if None in registers.values():
        pytest.skip("triton's bundled ptxas could not assemble the PTX on this machine")
    assert max(registers.values()) <= 64, registers


def test_rename_entry_renames_the_entry_and_its_parameters_only():
    from tokcomp.plugins_cuda.ptx import entry_params, rename_entry

    ptx = ".visible .entry k(\n.param .u64 k_param_0\n)\n{ ld.param.u64 %rd1, [k_param_0]; bra k_done; }"
    renamed = rename_entry(ptx, "k", "k_fp16")
    assert entry_params(renamed, "k_fp16") == [".param .u64 k_fp16_param_0"]
    assert "[k_fp16_param_0]" in renamed and "bra k_done" in renamed


def test_ptx_strip_refuses_a_kernel_that_reads_a_hidden_parameter():
    from tokcomp.plugins_cuda.ptx import strip_trailing_params

    ptx = ".visible .entry k(\n.param .u64 k_param_0,\n.param .u64 k_param_1\n)\n{ ld.param.u64 %rd1, [k_param_1]; }"
    with pytest.raises(RuntimeError, match="reads its hidden parameter 1"):
        strip_trailing_params(ptx, "k", keep=1)
    kept = strip_trailing_params(ptx.replace("[k_param_1]", "[k_param_0]"), "k", keep=1)
    assert "k_param_1" not in kept.split("{")[0]


# --- TensorRT plugin manifest and plugins ------------------------------------------


def test_manifest_round_trip_and_refuses_foreign_modules(tmp_path):
    from tokcomp.errors import TokcompError
    from tokcomp.fileio import write_json
    from tokcomp.plugins_cuda.manifest import build_manifest, read_manifest, write_manifest

    manifest = build_manifest(["IndexMerge", "GatherTokens", "IndexMerge"], aot=True)
    write_manifest(tmp_path / "m.json", manifest)
    assert read_manifest(tmp_path / "m.json")["plugins"] == [
        {"name": "GatherTokens", "namespace": "tokcomp", "version": "1", "aot": True},
        {"name": "IndexMerge", "namespace": "tokcomp", "version": "1", "aot": True},
    ]
    write_json(tmp_path / "evil.json", {**manifest, "module": "os"})
    with pytest.raises(TokcompError, match="tokcomp only loads tokcomp.plugins_cuda.tensorrt_plugins"):
        read_manifest(tmp_path / "evil.json")
    with pytest.raises(TokcompError, match="re-run `tokcomp export --format tensorrt`"):
        read_manifest(tmp_path / "missing.json")


def _tensorrt_loads() -> bool:
    try:
        import tensorrt  # noqa: F401
    except (ImportError, OSError):
        return False
    return CUDA


@pytest.mark.tensorrt
@pytest.mark.skipif(not _tensorrt_loads(), reason="needs TensorRT >= 10.7 with its libraries and a CUDA GPU")
def test_tensorrt_plugins_register_and_engine_matches_pytorch(tmp_path):
    from tests.test_export import make_checkpoint
    from tokcomp.export import export_checkpoint
    from tokcomp.plugins_cuda.manifest import build_manifest, register_plugins

    assert register_plugins(build_manifest(["GatherTokens", "IndexMerge"], aot=True))
    ckpt = make_checkpoint(tmp_path, [{"type": "tome", "r": 2}])
    entry = export_checkpoint(ckpt, "tensorrt", max_batch=8)
    assert entry["validation"]["passed"] and (ckpt / "model.engine.plugins.json").is_file()
    assert "tensorrt" in sys.modules
