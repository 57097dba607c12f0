"""One process of the 2-process DiffRate search in tests/test_ddp.py (launched by torchrun).

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_worker.py MODEL_DIR OUT_DIR

Each rank runs the same pass on its own shard of the calibration data and writes what it
learned to OUT_DIR/rank<N>.json; rank 0 alone writes OUT_DIR/written_by.json.
"""

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TOKCOMP_QUIET", "1")

import torch  # noqa: E402

from tokcomp.calibrate import distributed  # noqa: E402
from tokcomp.pipeline import PassContext, run_passes  # noqa: E402
from tokcomp.recipe import CalibrationSpec, parse_pass_list  # noqa: E402
from tokcomp.sources import load_model  # noqa: E402


def main(model_dir: str, out_dir: str) -> None:
    torch.set_num_threads(1)  # two processes share the CI machine's cores
    loaded = load_model(model_dir)
    calibration = CalibrationSpec(data="zoo:imagenet+cifar10", samples=16, batch_size=4, augment=True)
    ctx = PassContext(loaded.input_spec, seed=0, calibration=calibration, loaded=loaded)
    passes = parse_pass_list([{"type": "diffrate", "target_flops": 0.6, "epochs": 2, "lr": 0.05}])
    (record,) = run_passes(loaded.model, passes, ctx)
    out = Path(out_dir)
    result = {
        "rank": distributed.rank(),
        "world_size": distributed.world_size(),
        "prune_kept": record.metadata["prune_kept"],
        "merge_kept": record.metadata["merge_kept"],
        "report": record.metadata["report"],
    }
    (out / f"rank{distributed.rank()}.json").write_text(json.dumps(result))
    if distributed.is_main_process():
        (out / "written_by.json").write_text(json.dumps({"rank": distributed.rank()}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
