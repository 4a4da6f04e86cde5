"""implicit's BPR (0.7.3, C++/Cython) on a training log, one epoch at a time on request.

Runs in implicit's own interpreter (numpy, scipy and implicit only; no recsys), started by
``benchmarks/scripts/mf_vs_implicit.py``, which writes the training pairs to an ``.npz``
(``user``, ``item``, ``n_users``, ``n_items``) and alternates epochs with ours:

    <implicit venv>/bin/python benchmarks/scripts/implicit_bpr.py pairs.npz 64 20

(factors, epochs). One thread (``num_threads=1``), learning rate 0.01, regularization 0.01, its
default negative check (``verify_negative_samples``). Each epoch draws as many (user, item)
samples as the matrix has non-zeros, one uniform negative each, and updates the three rows with
plain SGD (Hogwild over threads). Protocol on stdin/stdout: the child prints ``ready`` and waits;
each line ``go`` runs one epoch and prints ``epoch <process CPU s> <wall s>``. Waiting costs no
CPU, so each figure is that epoch's work alone.
"""

import sys
import time

import numpy as np
import scipy.sparse as sp
from implicit.cpu.bpr import BayesianPersonalizedRanking


def main() -> None:
    path, factors, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    data = np.load(path)
    n_users, n_items = int(data["n_users"]), int(data["n_items"])
    ones = np.ones(len(data["user"]), dtype=np.float32)
    user_items = sp.csr_matrix((ones, (data["user"], data["item"])), shape=(n_users, n_items))
    user_items.sum_duplicates()
    del data, ones
    model = BayesianPersonalizedRanking(
        factors=factors, iterations=epochs, num_threads=1, random_state=0
    )
    clock = {}

    def wait() -> None:
        line = sys.stdin.readline().strip()
        if line != "go":
            sys.exit(0)
        clock["cpu"], clock["wall"] = time.process_time(), time.perf_counter()

    def after_epoch(*_args) -> None:
        cpu, wall = time.process_time() - clock["cpu"], time.perf_counter() - clock["wall"]
        print(f"epoch {cpu:.6f} {wall:.6f}", flush=True)
        wait()

    print(f"ready {user_items.nnz}", flush=True)
    wait()
    model.fit(user_items, show_progress=False, callback=after_epoch)


if __name__ == "__main__":
    main()
