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
from tests.conftest import tiny_vision
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
    a_count = (tokens + 1) // 2
    order = torch.stack([torch.randperm(a_count, generator=generator) for _ in range(batch)])
    src, unmerged = order[:, :r], order[:, r:].sort(dim=-1).values
    dst = torch.randint(0, tokens // 2, (batch, r), generator=generator)  # shared destinations included
    return unmerged, src, dst


def _random_case(dtype, batch=3, tokens=37, width=70, r=9, seed=0):
    generator = torch.Generator().manual_seed(seed)
    t = torch.randn(batch, tokens, width, generator=generator).to(dtype)
    return t, *_merge_indices(batch, tokens, r, generator)


TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 2e-2}


# --- custom ops (CPU reference, fake implementations) ------------------------------


@pytest.mark.parametrize("name", sorted(TOKEN_OPS))
def test_custom_ops_pass_opcheck_and_equal_the_reference(name):
    t, unmerged, src, dst = _random_case(torch.float32)
    args = {
        "gather_tokens": (t, unmerged),
        "bipartite_merge_sum": (t, unmerged, src, dst),
        "index_merge_sum": (t, unmerged, src, unmerged[:, : src.shape[1]] % unmerged.shape[1]),
        "transform_apply": (torch.rand(3, 5, 37), t),
    }[name]
    torch.library.opcheck(TOKEN_OPS[name], args)  # schema, fake impl, dispatch consistency
    assert torch.equal(TOKEN_OPS[name](*args), reference.REFERENCE_OPS[name](*args))


def test_swapping_ops_keeps_model_outputs_identical():
    model = tiny_vision("vit")
    tokcomp.apply(model, [{"type": "tome", "r": 4}])
    x = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        plain = model(pixel_values=x).logits
        with use_ops(TOKEN_OPS):
            routed = model(pixel_values=x).logits
    assert torch.equal(plain, routed)


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
    assert targets.count("tokcomp.bipartite_merge.default") == 4


# --- kernels vs the CPU reference --------------------------------------------------


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32], ids=["i64", "i32"])
def test_kernels_match_reference_on_random_inputs(dtype, index_dtype):
    from tokcomp.plugins_cuda import triton_kernels as kernels

    t, unmerged, src, dst = _random_case(dtype, seed=1)
    want = reference.bipartite_merge_sum_reference(t.float(), unmerged, src, dst)
    got = kernels.bipartite_merge(*(x.to(DEVICE) for x in (t, unmerged.to(index_dtype), src.to(index_dtype), dst.to(index_dtype))))
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

    t = torch.randn(2, 9, 20)  # A = rows 0, 2, .., 8 (5 rows), B = rows 1, 3, 5, 7
    wild = torch.tensor([[-7, 3, 10**6], [8, -1, 99]])
    got = kernels.gather_tokens(t.to(DEVICE), wild.to(DEVICE)).cpu()
    assert torch.equal(got, reference.gather_tokens_reference(t, wild.clamp(0, 8)))

    unmerged, src, dst = torch.tensor([[10**6, -3], [0, 4]]), torch.tensor([[-1, 77], [2, 3]]), torch.tensor([[0, 3], [1, 1]])
    got = kernels.bipartite_merge(*(x.to(DEVICE) for x in (t, unmerged, src, dst))).cpu()
    want = reference.bipartite_merge_sum_reference(t, unmerged.clamp(0, 4), src.clamp(0, 4), dst)
    torch.testing.assert_close(got, want)

    moved, into = wild[:, :2], torch.tensor([[0, 2], [1, 1]])  # destinations are output rows (< 3)
    got = kernels.index_merge(*(x.to(DEVICE) for x in (t, wild, moved, into))).cpu()
    torch.testing.assert_close(got, reference.index_merge_sum_reference(t, wild.clamp(0, 8), moved.clamp(0, 8), into))


@needs_triton
def test_kernels_match_reference_on_real_merges():
    """The exact (t, unmerged, src, dst) a ToMe model produces, recorded during a forward pass, fp32 and fp16."""
    from tests.test_export import small_vision
    from tokcomp.plugins_cuda import triton_kernels as kernels

    calls = []

    def record(t, unmerged, src, dst):
        calls.append((t.clone(), unmerged, src, dst))
        return reference.bipartite_merge_sum_reference(t, unmerged, src, dst)

    model = small_vision("dinov2")
    tokcomp.apply(model, [{"type": "tome", "r": 4}])
    with torch.inference_mode(), use_ops({"bipartite_merge_sum": record}):
        model(pixel_values=torch.rand(3, 3, 16, 16))
    assert len(calls) == 2
    for dtype in (torch.float32, torch.float16):
        for t, unmerged, src, dst in calls:
            want = reference.bipartite_merge_sum_reference(t.to(dtype).float(), unmerged, src, dst)
            got = kernels.bipartite_merge(t.to(dtype).to(DEVICE), unmerged.to(DEVICE), src.to(DEVICE), dst.to(DEVICE))
            scale = want.abs().max().item()
            torch.testing.assert_close(got.float().cpu(), want, atol=TOLERANCE[dtype] * scale, rtol=TOLERANCE[dtype])


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_dispatch_and_compiled_model_use_the_kernels():
    t, unmerged, src, dst = _random_case(torch.float16, batch=64, tokens=197, width=386, r=13)
    args = [x.cuda() for x in (t, unmerged, src, dst)]
    got = torch.ops.tokcomp.bipartite_merge(*args)
    want = reference.bipartite_merge_sum_reference(t.float(), unmerged, src, dst)
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
            (kernels.bipartite_merge_kernel, ptx.merge_signature(dtype, index_dtype), merge),
            (kernels.index_merge_kernel, ptx.merge_signature(dtype, index_dtype), merge),
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
    assert len(compiled_for_h100) == 3 * 2 * 3
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

    manifest = build_manifest(["BipartiteMerge", "GatherTokens", "BipartiteMerge"], aot=True)
    write_manifest(tmp_path / "m.json", manifest)
    assert read_manifest(tmp_path / "m.json")["plugins"] == [
        {"name": "BipartiteMerge", "namespace": "tokcomp", "version": "1", "aot": True},
        {"name": "GatherTokens", "namespace": "tokcomp", "version": "1", "aot": True},
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

    assert register_plugins(build_manifest(["BipartiteMerge", "GatherTokens", "IndexMerge"], aot=True))
    ckpt = make_checkpoint(tmp_path, [{"type": "tome", "r": 2}])
    entry = export_checkpoint(ckpt, "tensorrt", max_batch=8)
    assert entry["validation"]["passed"] and (ckpt / "model.engine.plugins.json").is_file()
    assert "tensorrt" in sys.modules
