"""Ahead-of-time compile of the Triton kernels to PTX, for TensorRT's AOT plugins.

TensorRT launches an AOT plugin kernel with exactly (inputs, extra int32 scalars,
outputs). Triton >= 3.4 appends two pointer parameters (global and profile scratch)
to every kernel; passing fewer arguments than the entry declares is undefined, so
`compile_kernel` removes those two from the PTX entry when the kernel provably
never reads them (no scratch memory and no load of either parameter), and refuses
otherwise. Each specialisation's entry is renamed after its types and constexprs
(`specialised_name`), so no two kernels in one engine share an entry name. Needs
triton only; no GPU: PTX generation (and `ptxas_registers`) runs on any machine.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass

_TYPE = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "int32": "i32", "int64": "i64"}


@dataclass(frozen=True)
class CompiledKernel:
    name: str
    ptx: str
    num_warps: int
    shared: int


def triton_type(dtype_name: str) -> str:
    try:
        return _TYPE[dtype_name]
    except KeyError:
        raise ValueError(f"tokcomp kernels take {sorted(_TYPE)} tensors, not {dtype_name}") from None


def gather_signature(dtype: str, index_dtype: str) -> dict[str, str]:
    t, i = triton_type(dtype), triton_type(index_dtype)
    return {"T": f"*{t}", "INDEX": f"*{i}", "n_in": "i32", "n_out": "i32", "width": "i32", "OUT": f"*{t}"}


def index_merge_signature(dtype: str, index_dtype: str) -> dict[str, str]:
    t, i = triton_type(dtype), triton_type(index_dtype)
    scalars = {name: "i32" for name in ("n_in", "n_kept", "n_src", "width")}
    return {"T": f"*{t}", "KEPT": f"*{i}", "SRC": f"*{i}", "DST": f"*{i}", **scalars, "OUT": f"*{t}"}


def specialised_name(base: str, signature: dict[str, str], constexprs: dict[str, int | bool]) -> str:
    """`base` + its pointer types + constexpr values, e.g. gather_rows_kernel_fp16_i64_BLOCK_D128."""
    types = dict.fromkeys(kind.lstrip("*") for kind in signature.values() if kind.startswith("*"))
    return "_".join([base, *types, *(f"{name}{int(value)}" for name, value in constexprs.items())])


def compile_kernel(kernel, signature: dict[str, str], constexprs: dict[str, int | bool], capability: int) -> CompiledKernel:
    """Compile `kernel` for sm_<capability> and return PTX whose entry takes exactly `signature`."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    if not isinstance(kernel, JITFunction):  # an interpreter wrapper: its helpers cannot be compiled either
        raise RuntimeError("compiling PTX needs triton's compiler: run without TRITON_INTERPRET=1")
    full_signature = {**signature, **{name: "constexpr" for name in constexprs}}
    source = ASTSource(fn=kernel, signature=full_signature, constexprs=dict(constexprs))
    compiled = triton.compile(source, target=GPUTarget("cuda", capability, 32))
    metadata = compiled.metadata
    if getattr(metadata, "global_scratch_size", 0) or getattr(metadata, "profile_scratch_size", 0):
        raise RuntimeError(f"{metadata.name} needs Triton scratch memory, which TensorRT AOT plugins cannot provide")
    ptx = strip_trailing_params(compiled.asm["ptx"], metadata.name, keep=len(signature))
    name = specialised_name(metadata.name, signature, constexprs)
    return CompiledKernel(name, rename_entry(ptx, metadata.name, name), metadata.num_warps, metadata.shared)


def rename_entry(ptx: str, old: str, new: str) -> str:
    """Rename kernel `old` (its entry and its `old_param_N` parameters) to `new`."""
    return re.sub(rf"(?<![\w$]){re.escape(old)}(?=_param_|[^\w$])", new, ptx)


def entry_params(ptx: str, name: str) -> list[str]:
    match = re.search(rf"\.entry\s+{re.escape(name)}\s*\((.*?)\)", ptx, re.S)
    if match is None:
        raise ValueError(f"kernel entry {name} not found in PTX")
    return [p.strip() for p in match.group(1).split(",") if p.strip()]


def strip_trailing_params(ptx: str, name: str, keep: int) -> str:
    """Drop entry parameters after the first `keep` if the body never reads them."""
    params = entry_params(ptx, name)
    if len(params) < keep:
        raise ValueError(f"{name} declares {len(params)} parameters, fewer than the {keep} TensorRT passes")
    extra = params[keep:]
    for index in range(keep, len(params)):
        if re.search(rf"\[{re.escape(name)}_param_{index}\]", ptx):
            raise RuntimeError(f"{name} reads its hidden parameter {index}; it cannot run as a TensorRT AOT plugin")
    if not extra:
        return ptx
    match = re.search(rf"(\.entry\s+{re.escape(name)}\s*\()(.*?)(\))", ptx, re.S)
    kept = ",\n\t".join(params[:keep])
    return ptx[: match.start(2)] + "\n\t" + kept + "\n" + ptx[match.end(2) :]


def _ptxas_path(capability: int) -> str:
    """The ptxas triton itself uses for this architecture (its helper's signature varies across versions)."""
    try:
        from triton.backends.nvidia import compiler

        try:
            tool = compiler.get_ptxas(capability)
        except TypeError:  # triton versions with one ptxas for every architecture
            tool = compiler.get_ptxas()
    except (ImportError, AttributeError):
        from triton import knobs

        tool = knobs.nvidia.ptxas
    return tool.path if hasattr(tool, "path") else tool[0]  # a tool object, or (path, version)


def ptxas_registers(ptx: str, capability: int) -> int | None:
    """Registers per thread that ptxas allocates for the PTX's kernel (None without a usable ptxas).

    Uses the ptxas that ships with triton; checks register pressure with no GPU.
    """
    try:
        ptxas = _ptxas_path(capability)
    except Exception:  # no usable ptxas: the caller reports "unknown", nothing to fail on
        return None
    arch = f"sm_{capability}a" if capability >= 90 else f"sm_{capability}"
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as source:
        source.write(ptx)
        source.flush()
        result = subprocess.run([ptxas, "-v", f"--gpu-name={arch}", source.name, "-o", "/dev/null"], capture_output=True, text=True)
    match = re.search(r"Used (\d+) registers", result.stderr)
    return int(match.group(1)) if result.returncode == 0 and match else None
