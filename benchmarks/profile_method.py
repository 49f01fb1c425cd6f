"""Where a method's training time goes: one epoch of `bench_transfer`'s run (cnn_small, the
offline teachers at 96 px, cached) under the torch profiler, the ops by self CPU time.

    python benchmarks/profile_method.py crd [--teachers 2] [--images 1500] [--rows 12]

The caches are built on the first call (under $MTKD_HOME, default a fresh temporary folder).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("method")
    ap.add_argument("--teachers", type=int, default=2)
    ap.add_argument("--images", type=int, default=1500)
    ap.add_argument("--dataset", default="animal-mnist")
    ap.add_argument("--rows", type=int, default=12)
    args = ap.parse_args()
    os.environ.setdefault("MTKD_HOME", tempfile.mkdtemp(prefix="mtkd-profile-"))
    import bench_transfer
    from torch.profiler import ProfilerActivity, profile

    from mtkd.engine import trainer

    fit = trainer.Trainer.fit

    def profiled(self: trainer.Trainer) -> dict:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            out = fit(self)
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows)
        print(table, file=sys.stderr)
        return out

    trainer.Trainer.fit = profiled
    child = argparse.Namespace(dataset=args.dataset, images=args.images, epochs=1, views=2,
                               child=[str(args.teachers), args.method, "cached"], out=tempfile.mkdtemp())  # fmt: skip
    bench_transfer.child(child)


if __name__ == "__main__":
    main()
