"""BPR-MF training CPU seconds per epoch, ours and RecBole 1.2.1, in interleaved pairs.

This VM's speed drifts by ~1.5x between runs minutes apart (benchmarks/matrix.md), so a ratio
of two numbers measured at different times is noisy. Here each pair runs the two sides back to
back, one process at a time, and the ratio is taken within the pair:

    OMP_NUM_THREADS=1 RECSYS_DATA_DIR=/path/to/datasets \
      python -m benchmarks.runner --compare recbole --only bpr-ml-100k --out <scratch>/bpr-bench \
        --runs-dir <scratch>/bpr-bench/runs
    OMP_NUM_THREADS=1 RECSYS_DATA_DIR=/path/to/datasets \
      python benchmarks/scripts/bpr_paired.py <scratch>/bpr-bench/runs/bpr-ml-100k/recbole/spec.json 5

The spec (written by the bench's RecBole side) holds RecBole's translation of the
``bpr-ml-100k`` entry and the path of the atomic files of its split. Each side trains 30 epochs:
ours through ``benchmarks/scripts/bpr_epoch_cpu.py`` (the entry's settings, median of epochs 4-30),
RecBole through the bench's child (``benchmarks/runner/recbole.py``, median over its epochs; RecBole
validates every epoch, which is timed separately and not counted). Prints one line per pair and
the median ratio.
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
EPOCHS = 30


def ours() -> float:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.scripts.bpr_epoch_cpu",
            "paired",
            "optim.steps_per_call=64",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("paired: "))
    return float(line.split("median ")[1].split()[0])


def recbole(spec_path: Path, python: Path, work: Path) -> float:
    spec = json.loads(spec_path.read_text())
    spec["config"].update(epochs=EPOCHS, stopping_step=EPOCHS, checkpoint_dir=str(work / "saved"))
    (work / "spec.json").write_text(json.dumps(spec))
    subprocess.run(
        [
            str(python),
            str(REPO / "benchmarks" / "runner" / "recbole.py"),
            "spec.json",
            "result.json",
        ],
        capture_output=True,
        check=True,
        cwd=work,
    )
    return float(json.loads((work / "result.json").read_text())["train_cpu_s_per_epoch"])


def main() -> None:
    spec_path = Path(sys.argv[1]).resolve()
    pairs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    python = Path(sys.argv[3]) if len(sys.argv) > 3 else REPO / ".venv-recbole" / "bin" / "python"
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for p in range(pairs):
            a = ours()
            b = recbole(spec_path, python.absolute(), Path(tmp))
            ratios.append(b / a)
            print(f"pair {p + 1}: ours {a:.4f}  RecBole {b:.4f}  ratio {b / a:.2f}x", flush=True)
    print(f"median ratio {np.median(ratios):.2f}x (min {min(ratios):.2f}x, max {max(ratios):.2f}x)")


if __name__ == "__main__":
    main()
