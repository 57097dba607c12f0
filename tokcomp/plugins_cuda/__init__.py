"""tokcomp's token-reduction ops as `tokcomp::` custom ops, GPU kernels and TensorRT plugins.

Importing this package is cheap (no torch, triton or tensorrt). The pieces, each
imported only when needed:

    plugins_cuda.ops               torch.library custom ops (CPU reference, fake impls,
                                   CUDA kernels registered lazily) + `TOKEN_OPS` for
                                   `tokcomp.reducers.ops.use_ops`
    plugins_cuda.triton_kernels    the Triton kernels and their torch launchers
    plugins_cuda.ptx               ahead-of-time compile of those kernels to PTX
    plugins_cuda.tensorrt_plugins  TensorRT 10 Python plugins (JIT + AOT) on the kernels
    plugins_cuda.manifest          the plugin manifest shipped beside an engine

See docs/kernels.md for why the kernels are Triton and what was run where.
"""

# ONNX / TensorRT op type of every custom op (domain and plugin namespace "tokcomp").
NAMESPACE = "tokcomp"
OP_TYPES = {
    "gather_tokens": "GatherTokens",
    "index_merge_sum": "IndexMerge",
}
# Ops that become TensorRT plugins: every one (each runs its Triton kernel in TensorRT).
PLUGIN_OP_TYPES = tuple(OP_TYPES.values())
PLUGIN_VERSION = "1"


def triton_available() -> bool:
    """True when triton can be imported (without importing it)."""
    import importlib.util

    return importlib.util.find_spec("triton") is not None
