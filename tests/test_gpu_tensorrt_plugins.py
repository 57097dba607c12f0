"""The TensorRT plugin module, imported on CPU against a stand-in for `tensorrt.plugin`.

TensorRT's libraries cannot be installed here, so `import tensorrt` fails. The
stand-in below implements the parts of the documented `tensorrt.plugin` contract
that tokcomp's plugin module touches, with TensorRT's checks:

- `register` / `autotune` / `impl` / `aot_impl` validate each function's signature the
  way TensorRT does: `issubclass(annotation, TensorDesc)` on every annotated argument
  (a string annotation raises TypeError), the argument names, and the aot_impl return
  annotation (str | bytes, str | bytes, KernelLaunchParams, a SymExprs);
- shape expressions have `is_constant` as a property and `constant_value()` as a method;
  the batch dimension is not a build-time constant.

The plugin's AOT functions then run for real: Triton compiles the kernels to PTX for
sm_90 (no GPU needed), in a subprocess without the Triton interpreter.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tokcomp.plugins_cuda import triton_available

ROOT = Path(__file__).resolve().parent.parent

FAKE_TENSORRT = '''
"""Stand-in for the tensorrt package in tokcomp's CPU tests (data types only)."""


class DataType:
    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return f"DataType.{self.name}"


float32, float16, bfloat16, int32, int64 = (DataType(n) for n in ("FLOAT", "HALF", "BF16", "INT32", "INT64"))
'''

FAKE_PLUGIN = '''
"""Stand-in for tensorrt.plugin: the documented API tokcomp uses, validated as TensorRT validates it."""

import inspect
import operator
import types
import typing

REGISTRY = {}


class Expr:
    """A shape or scalar expression; `value` is what it evaluates to for the test's shapes."""

    def __init__(self, value, constant=True):
        if isinstance(value, Expr):
            value, constant = value.value, value._constant
        self.value, self._constant = value, constant

    @property
    def is_constant(self):
        return self._constant

    def constant_value(self):  # a method in TensorRT (only is_constant is a property)
        if not self._constant:
            raise RuntimeError("not accessible for non-constant expressions")
        return self.value

    def _op(self, other, fn):
        other = other if isinstance(other, Expr) else Expr(other)
        return Expr(fn(self.value, other.value), self._constant and other._constant)

    def __add__(self, other):
        return self._op(other, operator.add)

    def __sub__(self, other):
        return self._op(other, operator.sub)

    def __mul__(self, other):
        return self._op(other, operator.mul)

    def __floordiv__(self, other):
        return self._op(other, operator.floordiv)


ShapeExpr = SymInt32 = Expr


def cdiv(first, second):
    return (Expr(first) + (second - 1)) // second


class SymExprs:
    def __init__(self, exprs):
        self.exprs = list(exprs)

    @classmethod
    def from_tuple(cls, exprs):
        return cls(Expr(e) for e in exprs)


class SymIntExprs(SymExprs):
    pass


class ShapeExprs(list):
    def __setitem__(self, index, value):
        if not isinstance(value, (Expr, int)):
            raise ValueError(f"Value should be int or ShapeExpr. Got '{type(value)}'")
        super().__setitem__(index, Expr(value))


class TensorDesc:
    def __init__(self, dtype, shape):
        self.dtype, self.shape_expr = dtype, ShapeExprs(Expr(d) for d in shape)

    def like(self):
        return TensorDesc(self.dtype, list(self.shape_expr))


class Tensor:
    pass


class KernelLaunchParams:
    def __init__(self):
        self.grid_x = self.grid_y = self.grid_z = self.block_x = self.block_y = self.block_z = Expr(1)
        self.shared_mem = Expr(0)

    def __setattr__(self, name, value):
        if name not in ("grid_x", "grid_y", "grid_z", "block_x", "block_y", "block_z", "shared_mem"):
            raise AttributeError(f"KernelLaunchParams object has no attribute '{name}'")
        object.__setattr__(self, name, Expr(value))


class AutoTuneCombination:
    def __init__(self, types_, layouts=None, tactics=None):
        self.types = [t.strip() for t in types_.split(",")]


def _is_tuple_of(annotation, cls):
    return typing.get_origin(annotation) is tuple and all(issubclass(a, cls) for a in typing.get_args(annotation))


def _check_args(func, plugin_id, tail, desc_class):
    """Argument names (tensors, then `tail`) and annotations, as TensorRT checks them."""
    entry = REGISTRY[plugin_id]
    names = list(inspect.signature(func).parameters)
    optional = [n for n in tail if n.endswith("?")]
    required = [n for n in tail if not n.endswith("?")]
    allowed = (entry["inputs"] + required, entry["inputs"] + required + [n[:-1] for n in optional])
    if names not in allowed:
        raise ValueError(f"{func.__name__}{inspect.signature(func)} does not match {allowed}")
    for name, param in inspect.signature(func).parameters.items():
        if param.annotation is inspect.Parameter.empty:
            continue
        if name == "outputs":
            if not _is_tuple_of(param.annotation, desc_class):
                raise ValueError(f"'outputs' should be a Tuple[{desc_class.__name__}], not {param.annotation}")
        elif name in ("stream", "tactic"):
            if not issubclass(param.annotation, int):
                raise ValueError(f"'{name}' should be an int")
        elif not issubclass(param.annotation, desc_class):  # TypeError for a string annotation, as in TensorRT
            raise ValueError(f"{name}: {param.annotation} is not a {desc_class.__name__}")


def register(plugin_id):
    def decorator(func):
        signature = inspect.signature(func)
        for name, param in signature.parameters.items():
            if param.annotation is inspect.Parameter.empty or not issubclass(param.annotation, TensorDesc):
                raise ValueError(f"{name} must be annotated TensorDesc (tokcomp plugins take no attributes)")
        ret = signature.return_annotation
        if not (inspect.isclass(ret) and issubclass(ret, TensorDesc)) and not _is_tuple_of(ret, TensorDesc):
            raise ValueError(f"return annotation {ret} is not TensorDesc or Tuple[TensorDesc]")
        REGISTRY[plugin_id] = {"inputs": list(signature.parameters), "register": func}
        return func

    return decorator


def autotune(plugin_id):
    def decorator(func):
        _check_args(func, plugin_id, ["outputs"], TensorDesc)
        ret = inspect.signature(func).return_annotation
        if typing.get_origin(ret) is not list or not all(issubclass(a, AutoTuneCombination) for a in typing.get_args(ret)):
            raise ValueError(f"autotune return annotation {ret} is not List[AutoTuneCombination]")
        REGISTRY[plugin_id]["autotune"] = func
        return func

    return decorator


def impl(plugin_id):
    def decorator(func):
        _check_args(func, plugin_id, ["outputs", "stream", "tactic?"], Tensor)
        REGISTRY[plugin_id]["impl"] = func
        return func

    return decorator


def _is_str_or_bytes(annotation):
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return all(a in (str, bytes) for a in typing.get_args(annotation))
    return annotation in (str, bytes)


def aot_impl(plugin_id):
    def decorator(func):
        _check_args(func, plugin_id, ["outputs", "tactic"], TensorDesc)
        ret = inspect.signature(func).return_annotation
        parts = typing.get_args(ret) if typing.get_origin(ret) is tuple else ()
        if not (
            len(parts) == 4
            and _is_str_or_bytes(parts[0])
            and _is_str_or_bytes(parts[1])
            and issubclass(parts[2], KernelLaunchParams)
            and issubclass(parts[3], SymExprs)
        ):
            raise ValueError(f"aot_impl return annotation {ret} is not (str|bytes, str|bytes, KernelLaunchParams, SymExprs)")
        REGISTRY[plugin_id]["aot_impl"] = func
        return func

    return decorator
'''

# Runs in the subprocess: import the plugins, list annotations, run every AOT function.
CHECK = """
import inspect, json, typing
import tensorrt as trt
import tensorrt.plugin as trtp
from tokcomp.plugins_cuda import tensorrt_plugins as plugins, ptx

plugins._capability = lambda: 90  # no GPU to ask; sm_90 is what the GPU machine has

def annotations(func):
    sig = inspect.signature(func)
    found = [p.annotation for p in sig.parameters.values() if p.annotation is not inspect.Parameter.empty]
    return found + [sig.return_annotation]

def is_type(annotation):
    return annotation is None or inspect.isclass(annotation) or typing.get_origin(annotation) is not None

report = {"registered": sorted(trtp.REGISTRY), "string_annotations": [], "aot": []}
for plugin_id, entry in trtp.REGISTRY.items():
    for role, func in entry.items():
        if callable(func) and not all(is_type(a) for a in annotations(func)):
            report["string_annotations"].append(f"{plugin_id} {role}")

batch = trtp.Expr(3, constant=False)  # the dynamic axis
for value in (trt.float32, trt.float16, trt.bfloat16):
    for index in (trt.int32, trt.int64):
        t = trtp.TensorDesc(value, [batch, 37, 70])
        kept, src, dst = (trtp.TensorDesc(index, [batch, n]) for n in (10, 9, 9))
        gather_index = trtp.TensorDesc(index, [batch, 11])
        calls = {
            "GatherTokens": (plugins.gather_tokens_desc, plugins.gather_tokens_aot, (t, gather_index)),
            "IndexMerge": (plugins.index_merge_desc, plugins.index_merge_aot, (t, kept, src, dst)),
        }
        for op, (desc, aot, inputs) in calls.items():
            out = desc(*inputs)
            name, code, params, extra = aot(*inputs, (out,), 0)
            name, code = (x.decode() if isinstance(x, bytes) else x for x in (name, code))
            report["aot"].append({
                "op": op, "dtype": value.name, "index": index.name, "name": name,
                "out_shape": [e.value for e in out.shape_expr],
                "entry_params": len(ptx.entry_params(code, name)),
                "grid": [params.grid_x.value, params.grid_y.value], "block_x": params.block_x.value,
                "scalars": [e.value for e in extra.exprs],
            })
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def plugin_report(tmp_path_factory):
    """The CHECK script's report, run once against the stand-in package."""
    if not triton_available():
        pytest.skip("triton is not installed (pip install triton)")
    fake = tmp_path_factory.mktemp("fake_tensorrt")
    (fake / "tensorrt").mkdir()
    (fake / "tensorrt" / "__init__.py").write_text(textwrap.dedent(FAKE_TENSORRT))
    (fake / "tensorrt" / "plugin.py").write_text(textwrap.dedent(FAKE_PLUGIN))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the real compiler, not the interpreter
    env["PYTHONPATH"] = os.pathsep.join([str(fake), str(ROOT)])
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_plugins_register_with_class_annotations(plugin_report):
    """TensorRT runs issubclass() on every annotation: none may be a string (no postponed annotations)."""
    assert plugin_report["registered"] == ["tokcomp::GatherTokens", "tokcomp::IndexMerge"]
    assert plugin_report["string_annotations"] == []


def test_aot_launch_matches_the_kernels_for_a_dynamic_batch(plugin_report):
    """Grid, block and scalars are expressions of the input shapes; the batch is never asked for its constant."""
    rows = plugin_report["aot"]
    assert len(rows) == 2 * 3 * 2  # ops x value dtypes x index dtypes
    batch, n_in, width, n_kept, n_src = 3, 37, 70, 10, 9
    n_out = {"GatherTokens": 11, "IndexMerge": n_kept}
    for row in rows:
        assert row["out_shape"] == [batch, n_out[row["op"]], width]
        assert row["grid"] == [batch * n_out[row["op"]], 1] and row["block_x"] == 128  # 4 warps, width 70 < 128
        if row["op"] == "GatherTokens":
            assert row["scalars"] == [n_in, 11, width] and row["entry_params"] == 2 + 3 + 1
        else:
            assert row["scalars"] == [n_in, n_kept, n_src, width] and row["entry_params"] == 4 + 4 + 1


def test_every_kernel_specialisation_has_its_own_entry_name(plugin_report):
    names = [row["name"] for row in plugin_report["aot"]]
    assert len(set(names)) == len(names)
