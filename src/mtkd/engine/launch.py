"""Starting several training processes on this machine through torchrun (`--nproc N`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mtkd.dist import env_dist
from mtkd.errors import MtkdError


def torchrun_command(nproc: int, mtkd_args: list[str]) -> list[str]:
    """`python -m torch.distributed.run --standalone` (a free local port) running `python -m mtkd ARGS`."""
    if nproc == 1:
        return [sys.executable, "-m", "mtkd", *mtkd_args]
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return [*run, "-m", "mtkd", *mtkd_args]


def thread_env(processes: int) -> dict[str, str]:
    """The environment of `processes` CPU processes sharing this machine's cores."""
    return {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // processes))}


def launch_local(nproc: int, mtkd_args: list[str], cfg: object) -> None:
    """Run `mtkd ARGS` with nproc processes; returns when they all finished, raises if one failed."""
    if nproc < 1:
        raise MtkdError(f"--nproc must be >= 1, got {nproc}")
    if env_dist().active:
        raise MtkdError("--nproc is for starting processes; under torchrun leave it out")
    from mtkd.engine.run import check_folder

    check_folder(Path(cfg.output.dir), "--resume" in mtkd_args)  # type: ignore[attr-defined]
    code = subprocess.call(torchrun_command(nproc, mtkd_args), env=thread_env(nproc))
    if code != 0:
        raise MtkdError(f"training with {nproc} processes failed (torchrun exit status {code}); see above")
