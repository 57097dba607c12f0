"""Helpers of scripts/gpu_check.sh: the carried wheels, the environment record and the summary.

    python scripts/gpu_check.py wheels-download --dest .gpu-wheels    # CPU machine, with network
    python scripts/gpu_check.py wheels-install --wheels DIR --target SITE   # GPU machine, no network
    python scripts/gpu_check.py wheels-verify --wheels DIR --python python3.12
    python scripts/gpu_check.py environment --out OUT/environment.json
    python scripts/gpu_check.py summary --steps STEPS.tsv --out OUT

Only the standard library at module level: this runs before the wheels are installed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "scripts" / "gpu_wheels.txt"
CARRY_LIMIT = 64 * 2**20  # what one remote call may carry, repository included
# Wheels for the GPU machine's interpreter: CPython 3.12 on x86_64 Linux (py3-none-any wheels match too).
TARGET = ["--python-version", "3.12", "--implementation", "cp", "--abi", "cp312", "--abi", "abi3", "--abi", "none"]
PLATFORMS = ["manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64", "any"]


def pinned() -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in REQUIREMENTS.read_text().splitlines())
    return [line for line in lines if line]


def always() -> set[str]:
    """Distributions installed even where the image has them (lines marked `# always`)."""
    lines = (line.split("#", 1) for line in REQUIREMENTS.read_text().splitlines() if "#" in line)
    return {normalised(spec.split("==")[0]) for spec, note in lines if spec.strip() and note.strip() == "always"}


def normalised(name: str) -> str:
    """PEP 503 form of a distribution name."""
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def distribution(wheel: Path) -> str:
    """Normalised distribution name of a wheel file (PEP 503)."""
    return normalised(wheel.name.split("-", 1)[0])


def wheels_download(dest: Path) -> int:
    dest.mkdir(parents=True, exist_ok=True)
    platforms = [arg for name in PLATFORMS for arg in ("--platform", name)]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", *TARGET, *platforms]
    result = subprocess.run([*command, "-d", str(dest), *pinned()])
    if result.returncode:
        return result.returncode
    wanted = {normalised(line.split("==")[0]) for line in pinned()}
    for stale in (w for w in dest.glob("*.whl") if distribution(w) not in wanted):
        stale.unlink()  # a wheel dropped from the list
    size = sum(w.stat().st_size for w in dest.glob("*.whl"))
    print(f"{len(list(dest.glob('*.whl')))} wheels, {size / 2**20:.1f} MiB in {dest}")
    if size > CARRY_LIMIT // 2:
        print(f"too large to carry beside the repository (limit {CARRY_LIMIT // 2**20} MiB in all)", file=sys.stderr)
        return 1
    return 0


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def wheels_install(wheels: Path, target: Path) -> int:
    """Install into `target` the carried wheels whose distribution this interpreter lacks, and those marked
    `# always` (no index, no deps; `target` comes first on PYTHONPATH)."""
    found = sorted(wheels.glob("*.whl"))
    if not found:
        print(f"no wheels in {wheels}: run `make gpu-wheels` on a machine with network and carry the folder")
        return 1
    missing, forced = [], always()
    for wheel in found:
        name = distribution(wheel)
        present = _installed(name)
        if present and name in forced:
            print(f"{name:24} present {present}, installing {wheel.name} ahead of it (marked always)")
        else:
            print(f"{name:24} {'present ' + present if present else 'installing ' + wheel.name}")
        if not present or name in forced:
            missing.append(str(wheel))
    if not missing:
        print("nothing to install: every carried distribution is already here")
        return 0
    if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode:
        return _unpack(missing, target)
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(target), *missing]
    return subprocess.run(command).returncode


def _unpack(wheels: list[str], target: Path) -> int:
    """Without pip: a wheel is a zip of what goes into site-packages (none of the carried ones has a .data folder)."""
    print(f"{sys.executable} has no pip: unpacking the wheels into {target}")
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            if any(".data/" in name for name in archive.namelist()):
                print(f"{wheel} has a .data folder and needs pip", file=sys.stderr)
                return 1
            archive.extractall(target)
    return 0


def _top_level_modules(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        names = {n.split("/", 1)[0] for n in archive.namelist() if "/" in n and not n.split("/", 1)[0].endswith((".dist-info", ".data"))}
        names |= {n[:-3] for n in archive.namelist() if "/" not in n and n.endswith(".py")}
    return sorted(n for n in names if n.isidentifier() and not n.startswith("_"))


_IMPORT_CHECK = """
import importlib, json, sys
result = {}
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
        result[name] = "ok"
    except ModuleNotFoundError as exc:
        result[name] = f"needs {exc.name}"
    except Exception as exc:
        result[name] = f"error {type(exc).__name__}: {exc}"
import pydantic
class Probe(pydantic.BaseModel):
    r: int
result["pydantic-validation"] = "ok" if Probe(r="13").r == 13 else "wrong"
print(json.dumps(result))
"""


def wheels_verify(wheels: Path, python: str) -> int:
    """Install every carried wheel into a throwaway folder for `python` (3.12 here) and import each module.

    A module that needs a package the GPU image provides (torch, numpy, onnx, ...) reports
    "needs X"; any other import error fails the check.
    """
    version = subprocess.run([python, "-c", "import sys; print(sys.version.split()[0])"], capture_output=True, text=True)
    if version.returncode:
        print(f"skipped: no {python} here; the wheels are verified on the GPU machine's own install step")
        return 0
    print(f"{python}: Python {version.stdout.strip()}")
    found = sorted(wheels.glob("*.whl"))
    with tempfile.TemporaryDirectory(prefix="tokcomp-wheels-") as site:
        install = [python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", site, *map(str, found)]
        if subprocess.run(install).returncode:
            return 1
        modules = sorted({m for wheel in found for m in _top_level_modules(wheel)})
        env = {"PYTHONPATH": f"{site}:{ROOT}", "PATH": "/usr/bin:/bin"}
        check = subprocess.run([python, "-c", _IMPORT_CHECK, "tokcomp", *modules], capture_output=True, text=True, env=env)
    if check.returncode:
        print(check.stderr[-2000:])
        return 1
    result = json.loads(check.stdout)
    for name, status in result.items():
        print(f"{name:24} {status}")
    return 1 if any(status.startswith(("error", "wrong")) for status in result.values()) else 0


def _run(command: list[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({type(exc).__name__})"


def environment(out: Path) -> int:
    """Versions, GPU, TF32 defaults and whether tokcomp imports, as JSON; exit 1 if tokcomp does not import."""
    record = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("torch", "triton", "transformers", "timm", "torchvision", "onnx", "onnxruntime", "onnxscript",
                 "optimum", "pydantic", "pytest", "numpy", "tensorrt"):  # fmt: skip
        record[name] = _installed(name)
    import torch

    record["cuda_available"] = torch.cuda.is_available()
    record["torch_cuda"] = torch.version.cuda
    if torch.cuda.is_available():
        record["gpu"] = torch.cuda.get_device_name()
        record["capability"] = "sm_%d%d" % torch.cuda.get_device_capability()
        record["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    record["tf32_defaults"] = {
        "cuda.matmul": getattr(torch.backends.cuda.matmul, "fp32_precision", None),
        "cudnn.conv": getattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision", None),
    }
    record["nvidia_smi"] = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    record["nvcc"] = _run(["nvcc", "--version"]).splitlines()[-1:] or None
    try:
        import tokcomp.api  # noqa: F401  (pydantic, torch, transformers)
        import tokcomp.export.io_spec  # noqa: F401
        from optimum.utils.input_generators import DummyVisionInputGenerator  # noqa: F401  (export dummy inputs)

        record["tokcomp_import"] = "ok"
    except Exception as exc:  # the record is the point: keep going and say why
        record["tokcomp_import"] = f"{type(exc).__name__}: {exc}"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    return 0 if record["tokcomp_import"] == "ok" else 1


def _tests_line(log: Path) -> str:
    """pytest's closing line (counts), if the log has one."""
    if not log.is_file():
        return ""
    lines = [line.strip("= ") for line in log.read_text(errors="replace").splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", line)]
    return lines[-1] if lines else ""


def summary(steps: Path, out: Path, dry_run: bool) -> int:
    """summary.json and summary.md from the steps file; exit 1 if a step failed or timed out."""
    rows = []
    for line in steps.read_text().splitlines():
        name, status, detail, seconds = line.split("\t")
        row = {"step": name, "status": status, "detail": detail, "seconds": float(seconds), "log": f"{name}.log"}
        if tests := _tests_line(out / f"{name}.log"):
            row["tests"] = tests
        rows.append(row)
    record = {"dry_run": dry_run, "steps": rows, "total_seconds": round(sum(r["seconds"] for r in rows), 1)}
    env = out / "environment.json"
    if env.is_file():
        record["environment"] = json.loads(env.read_text())
    (out / "summary.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        f"# GPU check{' (DRY_RUN: CPU machine)' if dry_run else ''}\n",
        "| step | status | detail | seconds | tests |",
        "|---|---|---|---:|---|",
        *(f"| {r['step']} | {r['status']} | {r['detail']} | {r['seconds']:.1f} | {r.get('tests', '')} |" for r in rows),
        f"\nTotal {record['total_seconds']:.0f} s. Logs: `<step>.log`; results: kernel_micro.*, gpu_throughput.*, environment.json.\n",
    ]
    (out / "summary.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 1 if any(r["status"] in ("failed", "timeout") for r in rows) else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("wheels-download").add_argument("--dest", type=Path, required=True)
    install = commands.add_parser("wheels-install")
    install.add_argument("--wheels", type=Path, required=True)
    install.add_argument("--target", type=Path, required=True)
    verify = commands.add_parser("wheels-verify")
    verify.add_argument("--wheels", type=Path, required=True)
    verify.add_argument("--python", default="python3.12")
    commands.add_parser("environment").add_argument("--out", type=Path, required=True)
    summarise = commands.add_parser("summary")
    summarise.add_argument("--steps", type=Path, required=True)
    summarise.add_argument("--out", type=Path, required=True)
    summarise.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "wheels-download":
        return wheels_download(args.dest)
    if args.command == "wheels-install":
        return wheels_install(args.wheels, args.target)
    if args.command == "wheels-verify":
        return wheels_verify(args.wheels, args.python)
    if args.command == "environment":
        return environment(args.out)
    return summary(args.steps, args.out, args.dry_run)


if __name__ == "__main__":
    sys.exit(main())
