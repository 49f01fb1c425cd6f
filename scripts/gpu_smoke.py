"""The first run on a GPU: every CUDA-specific path of mtkd once, one line per check.

    bash scripts/gpu-smoke.sh            # on a machine with one CUDA device, no network needed
    python scripts/gpu_smoke.py --device cpu   # a dry run of the script itself (fp16 checks skipped)

Offline: data from scikit-learn's digits and the offline MobileNetV2 package, no hub. Each line is
`ok   <check>  <what was seen>` or `FAIL <check>  <why>`; the exit status is the number of failures.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

FAILED: list[str] = []
RESULTS: list[dict] = []  # one entry per check, written to smoke.json beside the runs


def check(name: str, fn) -> None:  # noqa: ANN001
    start = time.perf_counter()
    try:
        seen = fn()
        print(f"ok   {name:<44} {seen or ''} ({time.perf_counter() - start:.0f} s)", flush=True)
        RESULTS.append(
            {"check": name, "ok": True, "seen": str(seen or ""), "seconds": time.perf_counter() - start}
        )
    except Exception as exc:  # noqa: BLE001 - every failure is reported, the next check runs
        FAILED.append(name)
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        print(f"FAIL {name:<44} {why}", flush=True)
        RESULTS.append({"check": name, "ok": False, "seen": why, "seconds": time.perf_counter() - start})
        if os.environ.get("MTKD_SMOKE_TRACE"):
            traceback.print_exc()


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "last.safetensors")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    dev = args.device
    if dev == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device here: run with --device cpu for a dry run of this script")
    # $OUT is the folder a device machine brings back: the runs go elsewhere, smoke.json goes there too.
    out = args.out or Path(tempfile.mkdtemp(prefix="mtkd-gpu-smoke-"))
    os.environ.setdefault("MTKD_HOME", str(out / "home"))
    import mtkd

    name = torch.cuda.get_device_name(0) if dev == "cuda" else "cpu"
    print(f"mtkd {mtkd.__version__}, torch {torch.__version__}, {name}, output in {out}", flush=True)
    common = {"data": "digits", "progress": False, "device": dev}
    fp16 = dev == "cuda"

    if dev == "cuda":

        def suite():  # noqa: ANN202
            root = Path(__file__).resolve().parents[1]
            proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-k", "cuda", str(root / "tests")],
                                  capture_output=True, text=True)  # fmt: skip
            last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-200:]
            if proc.returncode != 0 or "skipped" in last and "passed" not in last:
                raise RuntimeError(last)
            return last

        check("the suite's CUDA tests", suite)

    def alone(precision: str) -> str:
        run = mtkd.train(
            "cnn_small", epochs=10, out=out / f"alone-{precision}", precision=precision, **common
        )
        if run.test_acc < 0.8:  # 10 epochs of digits: about 0.9 on the CPU
            raise RuntimeError(f"test acc {run.test_acc:.3f} < 0.8")
        return f"test acc {run.test_acc:.3f}"

    check("student alone, precision auto", lambda: alone("auto"))
    if fp16:
        check("student alone, precision fp16", lambda: alone("fp16"))

    def interrupted() -> str:
        """An fp16 run stopped by SIGINT in epoch 2 and resumed ends with the weights of one that ran through."""
        precision = "fp16" if fp16 else "fp32"
        flags = ["--dataset", "digits", "--epochs", "4", "--set", f"train.precision={precision}", "--set",
                 f"train.device={dev}", "--set", "output.progress=false"]  # fmt: skip
        through = out / "through"
        subprocess.run([sys.executable, "-m", "mtkd", "train", *flags, "--out", str(through)], check=True,
                       capture_output=True)  # fmt: skip
        cut = out / "cut"
        proc = subprocess.Popen([sys.executable, "-m", "mtkd", "train", *flags, "--out", str(cut),
                                 "--set", "schedule.epochs=4"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        while not (cut / "metrics.csv").exists() or len((cut / "metrics.csv").read_text().splitlines()) < 2:
            if proc.poll() is not None:
                raise RuntimeError("the run ended before its first epoch was logged")
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        proc.wait()
        subprocess.run([sys.executable, "-m", "mtkd", "train", *flags, "--out", str(cut), "--resume"], check=True,
                       capture_output=True)  # fmt: skip
        a, b = weights(through), weights(cut)
        if not all(torch.equal(a[k], b[k]) for k in a):
            raise RuntimeError("resumed weights differ from the uninterrupted run's")
        return f"{precision}: stopped (exit {proc.returncode}), resumed, same weights"

    check("interrupted and resumed", interrupted)

    teacher = {"name": "mobilenet_v2", "input_size": 32}
    fits = {}

    def fit(mode: str) -> str:
        run = mtkd.fit_teacher(teacher, epochs=3, lr=0.003, mode=mode, out=out / f"teacher-{mode}", **common)
        fits[mode] = run
        return f"test acc {run.test_acc:.3f}"

    check("teacher fit, probe", lambda: fit("probe"))
    check("teacher fit, finetune", lambda: fit("finetune"))

    for method in ("features", "kd", "camkd"):
        for mode in ("cached", "online"):

            def transfer(method: str = method, mode: str = mode) -> str:
                run = mtkd.train("cnn_small", epochs=2, out=out / f"{method}-{mode}", teachers=[fits["probe"]],
                                 methods=[method], teacher_mode=mode, **common)  # fmt: skip
                return f"test acc {run.test_acc:.3f}"

            check(f"{method}, {mode} teacher", transfer)

    def compiled() -> str:
        run = mtkd.train(
            "cnn_small", epochs=2, out=out / "compiled", config={"train": {"compile": True}}, **common
        )
        return f"test acc {run.test_acc:.3f}"

    check("train.compile: true", compiled)

    if dev == "cuda":

        def syncs() -> str:
            """Host syncs of training steps, counted by torch's sync debug mode (warn)."""
            import warnings

            torch.cuda.set_sync_debug_mode("warn")
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    mtkd.train("cnn_small", epochs=1, out=out / "syncs", teachers=[fits["probe"]], methods=["features"],
                               **common)  # fmt: skip
            finally:
                torch.cuda.set_sync_debug_mode(0)
            n = sum("synchroniz" in str(w.message) for w in caught)
            steps = -(-int(0.9 * 1347) // 128)
            return f"{n} host syncs in one epoch of {steps} steps (with evaluation and checkpoints)"

        check("host syncs per step", syncs)

        def speed() -> str:
            ips = {}
            for d in ("cpu", "cuda"):
                run = mtkd.train(
                    "cnn_small", epochs=3, out=out / f"speed-{d}", data="digits", progress=False, device=d
                )
                import csv

                with open(run.folder / "metrics.csv") as fh:
                    ips[d] = float(list(csv.DictReader(fh))[-1]["train_ips"])
            return (
                f"cuda {ips['cuda']:.0f} img/s, cpu {ips['cpu']:.0f} img/s ({ips['cuda'] / ips['cpu']:.1f}x)"
            )

        check("images/s against the CPU", speed)

    print(f"{len(FAILED)} check(s) failed" + (f": {', '.join(FAILED)}" if FAILED else ""), flush=True)
    import json
    import platform

    record = {"torch": torch.__version__, "python": platform.python_version(), "device": name,
              "mtkd": mtkd.__version__, "date": time.strftime("%Y-%m-%d %H:%M"), "checks": RESULTS}  # fmt: skip
    for folder in {out, *([Path(os.environ["OUT"])] if os.environ.get("OUT") else [])}:
        (folder / "smoke.json").write_text(json.dumps(record, indent=1))
        print(f"numbers: {folder / 'smoke.json'}", flush=True)
    sys.exit(len(FAILED))


if __name__ == "__main__":
    main()
