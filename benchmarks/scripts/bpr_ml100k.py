"""The BPR-MF run on ml-100k that the training-loop timings share (the matrix's ``bpr-ml-100k``
entry: RecBole's protocol, batch 2,048, Xavier initialisation), timed by the runner's EpochTimer."""

from __future__ import annotations


def overrides(epochs: int, val_every: int, early_stopping: bool = True, logger: bool = False):
    """Hydra overrides of the run: ``epochs`` at most, a validation every ``val_every`` epochs."""
    return [
        "model=mf",
        "data=ml-100k",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        "logger=tensorboard" if logger else "~logger",
        "data.download=false",
        "seed=2020",
        "eval.monitor='val/mrr@10'",
        "callbacks.early_stopping.patience=10"
        if early_stopping
        else "callbacks.early_stopping=null",
        "data.split=random",
        "data.batch_size=2048",
        f"trainer.max_epochs={epochs}",
        "model.init=xavier",
        "eval.baseline=null",
        "+callbacks.bench_timer._target_=benchmarks.runner.matrix.EpochTimer",
        f"trainer.check_val_every_n_epoch={val_every}",
    ]
