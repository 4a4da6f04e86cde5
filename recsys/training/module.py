"""RecModule: the one LightningModule that trains and evaluates every model.

It builds the model from its config with the dataset sizes injected, owns the optimizer, runs the
model's ``loss`` on training batches, and evaluates by full ranking: score every item for a chunk
of users, mask the items each user has already seen (unless ``evaluation.mask_seen`` is off),
take the top K, and accumulate per-user metrics. It never branches on which model it holds.

Its hyper-parameters are plain values (dicts, lists, numbers, strings), so checkpoints load with
``torch.load(weights_only=True)`` and ``RecModule(**ckpt["hyper_parameters"])`` rebuilds it.
"""

from __future__ import annotations

import logging
import warnings
from collections import defaultdict
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.precision import Precision
from torch import Tensor

from recsys.data.batches import EvalBatch
from recsys.errors import CheckpointError, ConfigError
from recsys.metrics.beyond import average_popularity, list_metrics
from recsys.metrics.ranking import METRICS, ranked_hits, ranking_metrics, topk_hits
from recsys.metrics.rating import RATING_METRICS, error_sums, per_row, pooled
from recsys.models.base import build_model
from recsys.training.callbacks import EpochSummary
from recsys.training.optimizers import row_updates_of
from recsys.trust import Trust, resolve

log = logging.getLogger("recsys")
# RecModule moves its own batch dataclasses (transfer_batch_to_device below); Lightning warns
# that a LightningModule override wins over the datamodule, which is exactly the intent.
warnings.filterwarnings("ignore", message=".*overridden `transfer_batch_to_device`.*")

EVAL_DEFAULTS: dict[str, Any] = {
    "topk": [10, 20],
    "metrics": list(METRICS),
    "mask_seen": True,
    "task": "ranking",
    "rating_clip": None,
    "popularity_bias": True,
}
TASKS = ("ranking", "rating")
OPTIM_DEFAULTS: dict[str, Any] = {"_target_": "torch.optim.Adam", "lr": 1e-3}


def validate_eval(evaluation: dict[str, Any], num_items: int | None = None) -> None:
    """Refuse bad evaluation settings with a one-line reason naming the key."""
    task = evaluation.get("task", "ranking")
    if task not in TASKS:
        raise ConfigError(f"eval.task must be one of {', '.join(TASKS)}, got {task!r}")
    if task == "rating":
        bad = [m for m in evaluation.get("metrics", []) if m not in RATING_METRICS]
        if bad or not evaluation.get("metrics"):
            raise ConfigError(
                f"eval.metrics must be a non-empty subset of {list(RATING_METRICS)} when "
                f"eval.task=rating, got {evaluation.get('metrics')!r}"
            )
        clip = evaluation.get("rating_clip")
        if clip is not None and (
            not isinstance(clip, list | tuple) or len(clip) != 2 or clip[0] >= clip[1]
        ):
            raise ConfigError(
                f"eval.rating_clip must be null or [low, high] with low < high, got {clip!r}"
            )
        return
    topk = evaluation.get("topk")
    if not isinstance(topk, list | tuple) or len(topk) == 0:
        raise ConfigError(f"eval.topk must be a non-empty list of positive integers, got {topk!r}")
    for k in topk:
        if not isinstance(k, int) or k < 1:
            raise ConfigError(f"eval.topk entries must be positive integers, got {k!r}")
        if num_items is not None and k > num_items:
            raise ConfigError(
                f"eval.topk contains {k}, larger than the catalogue ({num_items} items)"
            )
    unknown = [m for m in evaluation.get("metrics", []) if m not in METRICS]
    if unknown or not evaluation.get("metrics"):
        raise ConfigError(
            f"eval.metrics must be a non-empty subset of {list(METRICS)}, got {evaluation.get('metrics')!r}"
        )


def validate_sampled(sampled: Any, num_items: int | None = None) -> None:
    """``eval.sampled``: null, or ``{n: int >= 1, strategy: uniform | popularity}``."""
    if sampled is None:
        return
    n = sampled.get("n") if isinstance(sampled, dict) else None
    strategy = sampled.get("strategy", "uniform") if isinstance(sampled, dict) else None
    if not isinstance(n, int) or n < 1 or (num_items is not None and n >= num_items):
        raise ConfigError(
            f"eval.sampled must be null or {{n: int in [1, num_items), strategy: uniform|popularity}}, got {sampled!r}"
        )
    if strategy not in ("uniform", "popularity"):
        raise ConfigError(f"eval.sampled.strategy must be uniform or popularity, got {strategy!r}")


class _LossSums:
    """The epoch's loss terms, each summed over batches weighted by batch size. Per step in
    place, without a module attribute assignment (``nn.Module.__setattr__`` costs several
    microseconds), and a term that is the same tensor as another (MF's ``bpr`` and ``loss``)
    scaled once."""

    __slots__ = ("sums", "n")

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.n = 0

    def add(self, out: dict[str, Tensor], bs: int) -> None:
        scaled: dict[int, Tensor] = {}
        sums = self.sums
        for name, value in out.items():
            v = scaled.get(id(value))
            if v is None:
                v = scaled[id(value)] = value.detach() * bs
            prev = sums.get(name)
            sums[name] = v if prev is None else prev + v
        self.n += bs


class RecModule(pl.LightningModule):
    def __init__(
        self,
        model: dict[str, Any],
        num_users: int,
        num_items: int,
        optim: dict[str, Any] | None = None,
        evaluation: dict[str, Any] | None = None,
        seed: int = 0,
        config: dict[str, Any] | None = None,
        features: dict[str, Any] | None = None,
        trust: Trust | None = None,
    ):
        """
        Args:
            model: model config with ``_target_`` and the constructor's hyper-parameters.
            num_users, num_items: dataset sizes, injected into the model.
            optim: optimizer config with ``_target_`` (a ``torch.optim`` class) and its kwargs.
            evaluation: ``topk``, ``metrics``, ``mask_seen``.
            seed: seeds the model's per-epoch randomness (dropout, in-model sampling).
            config: the whole resolved run config, stored so a checkpoint describes its run.
            features: the split's feature fields (``SplitFeatures.schema()``) for a model that
                uses features (sizes its attribute tables; the codes are buffers of the
                model), None for an id-only model.
            trust: the model and optimizer configs come from a file being loaded (a
                checkpoint): they may name only recsys' own classes or packages the user trusts
                (:mod:`recsys.trust`); None for the user's own config. Not stored.
        """
        super().__init__()
        self.save_hyperparameters(ignore=["trust"])
        self.trust = trust
        self.model = build_model(model, num_users, num_items, trust, features)
        self.optim_cfg = {**OPTIM_DEFAULTS, **(optim or {})}
        # optim.steps_per_call = K > 1: each Lightning training step receives K consecutive
        # batches and runs their K optimizer steps itself (manual optimization). The updates are
        # those of K = 1; Lightning's per-step overhead (~1 ms on CPU) is paid once per K steps,
        # which matters when a step is as small as BPR-MF's (~1.5 ms)
        self.steps_per_call = self.optim_cfg.pop("steps_per_call", 1)
        if not isinstance(self.steps_per_call, int) or self.steps_per_call < 1:
            raise ConfigError(
                f"optim.steps_per_call must be an integer >= 1, got {self.steps_per_call!r}"
            )
        self.automatic_optimization = self.steps_per_call == 1
        self.eval_cfg = {**EVAL_DEFAULTS, **(evaluation or {})}
        validate_eval(self.eval_cfg, num_items)
        self.topk = sorted(int(k) for k in self.eval_cfg["topk"])
        self._outputs: dict[str, list[dict[str, Tensor]]] = defaultdict(list)
        self.results: dict[str, dict[str, float]] = {}
        self.per_user: dict[str, dict[str, np.ndarray]] = {}
        self.sampled = self.eval_cfg.get("sampled")
        validate_sampled(self.sampled, num_items)
        self._item_pop: Tensor | None = None
        # coverage@K, gini@K, arp@K from the top-K lists (eval.popularity_bias, default on)
        self.popularity_bias = bool(self.eval_cfg.get("popularity_bias"))

    @property
    def closed_form(self) -> bool:
        return self.model.train_batch is None

    # -- training -----------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        # in-model randomness (dropout, masking) depends only on (seed, epoch): resume-exact.
        # On the CPU only its generator is used: seeding it alone costs 1 us, where
        # ``torch.manual_seed`` (every device's generators) costs ~0.2 ms, 1% of a small MF epoch
        seed = int(self.hparams.seed) * 1_000_003 + self.current_epoch
        if self.device.type == "cpu":
            torch.default_generator.manual_seed(seed)
        else:
            torch.manual_seed(seed)
        self._loss_acc = _LossSums()

    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        if self.automatic_optimization:
            loss = self._train_loss(batch)
        else:  # optim.steps_per_call > 1: a list of batches, one optimizer step each
            opt = self.optimizers()
            for b in batch:
                loss = self._train_loss(b)
                if any(p.grad is not None for p in self._trained):  # none after a fused step
                    opt.zero_grad()  # (~50 us even with nothing to clear)
                if self._direct:  # no hook to dispatch: what manual_backward would end in
                    loss.backward()
                else:
                    self.manual_backward(loss)
                opt.step()  # counts the step (global_step) and runs the optimizer
        if batch_idx + 1 >= self.trainer.num_training_batches:
            self._log_train_losses()
        return loss if self.automatic_optimization else None

    def _direct_steps(self, opt: Any) -> bool:
        """Whether the ``steps_per_call`` loop may call ``loss.backward()`` itself instead of
        ``manual_backward``, which then would only dispatch backward hooks that nothing
        overrides: true for one process at full fp32 precision whose callbacks and module leave
        ``on_before_backward`` and ``on_after_backward`` alone. Anything else (DDP, mixed
        precision, a callback watching gradients) takes Lightning's path. The optimizer step is
        always ``LightningOptimizer.step`` (public; it counts ``global_step``). What the direct
        backward saves is measured in benchmarks/general.md (training loop). Decided once per
        fit (``on_train_start``)."""
        hooks = ("on_before_backward", "on_after_backward")
        trainer = self.trainer
        return (
            trainer.world_size == 1
            and type(trainer.precision_plugin) is Precision
            and all(
                getattr(type(cb), h) is getattr(pl.Callback, h)
                for cb in trainer.callbacks
                for h in hooks
            )
            and all(getattr(type(self), h) is getattr(pl.LightningModule, h) for h in hooks)
        )

    def on_fit_start(self) -> None:
        # the whole training matrix, before the first step, for a model that declares it needs it
        # (a graph model's adjacency); the datamodule is the one being fitted
        if self.model.needs_train_matrix:
            train = self.trainer.datamodule.train_matrix()
            self.model.set_train_matrix(train.to(self.device))

    def on_train_start(self) -> None:
        self._direct = not self.automatic_optimization and self._direct_steps(self.optimizers())
        self._trained = [p for p in self.parameters() if p.requires_grad]
        if self.model.applies_row_updates:
            self.model.use_row_updates(self._row_updates())

    def on_train_end(self) -> None:
        if self.model.applies_row_updates:
            self.model.use_row_updates({})

    def _row_updates(self) -> dict:
        """The optimizer's in-backward row updates (``optim.fused=true`` on ``row_adagrad``),
        for one process without gradient clipping or accumulation only: elsewhere the
        gradients must reach ``.grad`` (all-reduce, clipping, summing), so the ordinary step
        runs. Bound when training starts, after a resumed optimizer state is loaded."""
        trainer = self.trainer
        if trainer.world_size != 1 or trainer.gradient_clip_val:
            return {}
        if trainer.accumulate_grad_batches != 1:
            return {}
        return row_updates_of(self.optimizers())

    def _train_loss(self, batch: Any) -> Tensor:
        """The model's loss on one batch; its terms are summed for the epoch's ``train/*`` logs."""
        out = self.model.loss(batch)
        if isinstance(out, Tensor):
            out = {"loss": out}
        # ``train/<loss>`` is the epoch mean weighted by batch size, as Lightning's on_epoch
        # logging computes it, but summed here and logged once per epoch (at its last batch, so
        # a validation pass sees it): a ``self.log`` per step costs ~15% of a small MF epoch
        acc = self.__dict__.get("_loss_acc")
        if acc is None:
            acc = self._loss_acc = _LossSums()
        acc.add(out, len(getattr(batch, "user", [])) or 1)
        return out["loss"]

    def on_train_epoch_end(self) -> None:
        self._log_train_losses()  # an epoch that ended before its last batch
        self._to_loggers(getattr(self, "_epoch_losses", {}))
        self._epoch_losses = {}

    def _log_train_losses(self) -> None:
        acc = self.__dict__.get("_loss_acc")
        sums, n = (acc.sums, acc.n) if acc is not None else ({}, 0)
        if not sums or not n:
            return
        means = {f"train/{name}": total / n for name, total in sums.items()}
        watched = self._watched()  # for the callbacks; the loggers get them all at epoch end
        for key, value in means.items():
            if key in watched:  # ``self.log`` costs ~0.8 ms a key: 5% of a small MF epoch
                self.log(key, value, on_step=False, on_epoch=True, batch_size=n, logger=False)
        self._epoch_losses = {k: float(v) for k, v in means.items()}
        self._loss_acc = _LossSums()

    def _to_loggers(self, metrics: dict[str, float]) -> None:
        """Write ``metrics`` to every logger (TensorBoard, MLflow) with the ``epoch``, at the
        index of the last optimizer step taken (where Lightning's own logging puts epoch-end
        metrics). Through the public ``Logger`` API, not ``self.log``: its result record costs
        ~0.25 ms per key, a quarter of a BPR validation pass with ~20 metrics. RecModule logs
        everything it logs this way, so training and validation curves share one step axis
        (optimizer steps, whatever ``optim.steps_per_call``). Loggers write on rank zero only."""
        if not metrics or not self.loggers or self.trainer.sanity_checking:
            return
        step = max(self.trainer.global_step - 1, 0)
        row = {**metrics, "epoch": self.current_epoch}
        for logger in self.loggers:
            logger.log_metrics(row, step=step)
            logger.save()

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            return None
        cfg = dict(self.optim_cfg)
        target = cfg.pop("_target_")
        cls = resolve(target, "optim", "optim._target_", self.trust)
        if self.trust is not None and not (
            isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)
        ):
            raise CheckpointError(
                f"{self.trust.origin}: optim._target_={target!r} is not an optimizer class"
            )
        if float(cfg.get("lr", 1.0)) <= 0:
            raise ConfigError(f"optim.lr must be > 0, got {cfg.get('lr')}")
        return cls(params, **cfg)

    def fit_closed_form(self, train: Tensor) -> None:
        """Fit a closed-form model (``train_batch is None``) on the sparse training matrix."""
        self.model.fit(train.to(self.device))

    # -- evaluation ---------------------------------------------------------------------------
    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int):
        if isinstance(batch, list):  # optim.steps_per_call > 1
            return [self.transfer_batch_to_device(b, device, dataloader_idx) for b in batch]
        return (
            batch.to(device)
            if hasattr(batch, "to")
            else super().transfer_batch_to_device(batch, device, dataloader_idx)
        )

    def evaluate_ratings(self, batch: EvalBatch) -> dict[str, Tensor]:
        """Per-user error sums of the model's ``predict(user, item)`` on held-out ratings."""
        if batch.target_ratings is None:
            raise ConfigError("eval.task=rating needs a dataset with ratings (this one has none)")
        if not self.model.predicts_pairs:
            raise ConfigError(
                f"eval.task=rating needs a model with predict(user, item); "
                f"{type(self.model).__name__} only ranks"
            )
        users = batch.users.user
        pred = self.model.predict(users[batch.target_rows], batch.target_items).float()
        clip = self.eval_cfg.get("rating_clip")
        if clip is not None:
            pred = pred.clamp(float(clip[0]), float(clip[1]))
        sums = error_sums(pred, batch.target_ratings, batch.target_rows, len(users))
        return {**sums, "user": users}

    def evaluate_batch(self, batch: EvalBatch) -> dict[str, Tensor]:
        """Per-user results of one chunk of users: score all items, mask, top-k, compare.

        Ranking returns the raw per-user results (hits of the top K, relevant counts, keys
        starting with ``_``); :meth:`user_metrics` turns them into metric values once per pass
        (per chunk, the metric arithmetic on a few thousand values cost as much as the top-k
        selection). Use :meth:`evaluate` for both. Rating returns per-user error sums."""
        if self.eval_cfg["task"] == "rating":
            return self.evaluate_ratings(batch)
        users = batch.users
        scores = self.model.score(users).float()  # (B, I)
        if self.eval_cfg["mask_seen"]:  # out of place: the model's tensor is never written
            flat = users.rows() * scores.shape[1] + users.items
            scores = scores.reshape(-1).index_fill(0, flat, float("-inf")).view(scores.shape)
        target = torch.zeros_like(scores, dtype=torch.bool)
        target[batch.target_rows, batch.target_items] = True
        # one top-k (the largest cost of a pass) for the hits and the list metrics
        top, hits = ranked_hits(scores, target, max(self.topk))
        # uint8, not bool: DDP gathers these and gloo has no bool all_gather
        values = {"user": users.user, "_hits": hits.to(torch.uint8), "_n_rel": batch.n_rel}
        cold = self.cold_item_mask()
        if cold is not None:  # data.split=cold_items: which hits and targets are cold items
            values["_top_cold"] = cold[top].to(torch.uint8)  # (B, K)
            values["_n_rel_cold"] = (target & cold).sum(1)  # (B,) distinct cold targets
        if self.popularity_bias and self._train_popularity() is not None:
            values["_top"] = top  # arp per user, coverage/gini over the lists at the end
        if self.sampled:
            values["_sampled_hits"] = self.sampled_hits(batch, scores, target).to(torch.uint8)
        return values

    def user_metrics(self, raw: dict[str, Tensor]) -> dict[str, Tensor]:
        """Per-user metric values ``{"ndcg@10": (U,), ...}`` (plus ``user`` and ``_top`` when
        present) from :meth:`evaluate_batch` results concatenated over any number of chunks."""
        metrics = tuple(self.eval_cfg["metrics"])
        out = {k: raw[k] for k in ("user", "_top") if k in raw}
        out.update(ranking_metrics(raw["_hits"], raw["_n_rel"], self.topk, metrics))
        if "_top_cold" in raw:
            out.update(item_slice_metrics(raw, self.topk, metrics))
        if "_top" in raw:
            out.update(average_popularity(raw["_top"], self.item_popularity(), self.topk))
        if "_sampled_hits" in raw:
            sampled = ranking_metrics(raw["_sampled_hits"], raw["_n_rel"], self.topk, metrics)
            out.update({f"sampled_{k}": v for k, v in sampled.items()})
        return out

    def evaluate(self, batches) -> dict[str, Tensor]:
        """Per-user metric values over ``batches`` (one process): what a validation or test
        stage computes, without a trainer."""
        outs = [self.evaluate_batch(b) for b in batches]
        if not outs:
            return {}
        cat = _concat(outs)
        return cat if self.eval_cfg["task"] == "rating" else self.user_metrics(cat)

    def sampled_hits(self, batch: EvalBatch, scores: Tensor, target: Tensor) -> Tensor:
        """(B, K) hits of the ranking of each user's targets among ``eval.sampled.n`` sampled
        negatives only (never a history item or a target; uniform, or popularity-weighted
        without replacement by Gumbel top-k), reported as ``sampled_<metric>@K``. Krichene &
        Rendle (KDD 2020): sampled metrics can disagree with full ranking, even on which model is
        better."""
        if not getattr(self, "_sampled_warned", False):
            log.warning(
                "eval.sampled: metrics over %d sampled negatives (%s) can reorder models relative to "
                "full ranking (Krichene & Rendle, KDD 2020); they are reported as sampled_*",
                self.sampled["n"],
                self.sampled.get("strategy", "uniform"),
            )
            self._sampled_warned = True
        users = batch.users
        g = torch.Generator(device=scores.device)
        g.manual_seed(int(self.hparams.seed) * 1_000_003 + int(users.user[0]) + 1)
        keys = torch.rand(scores.shape, generator=g, device=scores.device)
        if self.sampled.get("strategy", "uniform") == "popularity":
            keys = self.item_popularity().log()[None] - torch.log(-torch.log(keys.clamp_min(1e-20)))
        excluded = target.clone()
        excluded[users.rows(), users.items] = True
        keys = keys.masked_fill(excluded, float("-inf"))
        neg = torch.topk(keys, int(self.sampled["n"]), dim=1).indices  # (B, n)
        candidate = target.clone().scatter_(1, neg, True)
        sampled = scores.masked_fill(~candidate, float("-inf"))
        return topk_hits(sampled, target, max(self.topk))

    def item_popularity(self) -> Tensor:
        """(I,) training events per item, from the attached datamodule (cached)."""
        if self._item_pop is None:
            dm = getattr(self.trainer, "datamodule", None)
            if dm is None:
                raise ConfigError("eval.sampled.strategy=popularity needs the run's datamodule")
            counts = torch.as_tensor(dm.data.train.item_counts(), dtype=torch.float32)
            self._item_pop = counts.to(self.device)
        return self._item_pop

    def _train_popularity(self) -> Tensor | None:
        """Training counts per item, or None without an attached datamodule (no bias metrics)."""
        trainer = getattr(self, "_trainer", None)
        if trainer is None or getattr(trainer, "datamodule", None) is None:
            return None
        return self.item_popularity()

    def set_cold_items(self, labels: np.ndarray | Tensor | None) -> None:
        """Evaluate cold and warm items apart (``cold/<metric>``, ``warm/<metric>``): ``labels``
        is (I,) with 0 for a warm item, anything else for a cold one (``Split.cold_items``);
        None: no slices. Without it, the attached datamodule's split decides."""
        self._cold_items = None if labels is None else torch.as_tensor(labels) != 0
        self._cold_items_set = True

    def cold_item_mask(self) -> Tensor | None:
        """(I,) bool cold items of the split being evaluated (``data.split=cold_items``), from
        :meth:`set_cold_items` or the attached datamodule's split; None: no item slices."""
        if not getattr(self, "_cold_items_set", False):
            trainer = getattr(self, "_trainer", None)
            dm = getattr(trainer, "datamodule", None) if trainer is not None else None
            if dm is None:
                return None
            self.set_cold_items(getattr(dm.data, "cold_items", None))
        cold = self._cold_items
        if cold is not None and cold.device != self.device:
            cold = self._cold_items = cold.to(self.device)
        return cold

    def _eval_step(self, stage: str, batch: EvalBatch) -> None:
        self._outputs[stage].append({k: v.detach() for k, v in self.evaluate_batch(batch).items()})

    def validation_step(self, batch: EvalBatch, batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: EvalBatch, batch_idx: int) -> None:
        self._eval_step("test", batch)

    def _eval_epoch_end(self, stage: str) -> None:
        outs = self._outputs.pop(stage, [])
        if not outs:
            return
        cat = _concat(outs)
        if self.trainer.world_size > 1:  # each rank scored a disjoint set of users
            cat = self._gather_users(cat)
        if self.eval_cfg["task"] != "rating":
            cat = self.user_metrics(cat)  # once, on every user of the stage
        users = cat.pop("user")
        top = cat.pop("_top", None)
        if self.eval_cfg["task"] == "rating":  # pooled over ratings, not averaged over users
            means = pooled(cat, self.eval_cfg["metrics"])
            cat = {k: v for k, v in per_row(cat).items() if k in means}
        else:
            means = stage_means(cat)
            if top is not None:
                means.update(list_metrics(top, self.model.num_items, self.topk))
        self.results[stage] = means
        self.per_user[stage] = {
            "user": users.cpu().numpy(),
            **{k: v.cpu().numpy() for k, v in cat.items()},
        }
        self._log_stage(stage, means)

    def _log_stage(self, stage: str, means: dict[str, float]) -> None:
        """Every metric to the loggers (:meth:`_to_loggers`), and through Lightning's
        ``self.log`` only the ones a callback reads from ``trainer.callback_metrics`` (a
        ``monitor`` of any callback, ``eval.monitor``, the epoch summary line)."""
        named = {f"{stage}/{k}": v for k, v in means.items()}
        watched = self._watched()
        self.log_dict(
            {k: v for k, v in named.items() if k in watched}, sync_dist=False, logger=False
        )
        self._to_loggers(named)

    def _watched(self) -> set[str]:
        """The metric names a callback reads from ``trainer.callback_metrics``: ``eval.monitor``,
        any callback's ``monitor``, the epoch summary line's."""
        watched = {str(self.eval_cfg.get("monitor"))}
        for cb in self.trainer.callbacks:
            watched.update(m for m in [getattr(cb, "monitor", None)] if isinstance(m, str))
            if isinstance(cb, EpochSummary):
                watched.update(cb.metrics)
        return watched

    def _gather_users(self, cat: dict[str, Tensor]) -> dict[str, Tensor]:
        """Every rank's per-user values, concatenated and sorted by user id.

        Ranks hold different numbers of users, so each pads its values to the largest count
        before ``all_gather`` and the padding is dropped by a validity mask. Sorting by user id
        gives the order (and so the floating-point sums) of a single-process run.
        """
        n = torch.tensor([len(cat["user"])], device=self.device)
        n_max = int(self.all_gather(n).max())
        out: dict[str, Tensor] = {}
        valid = None
        for k, v in cat.items():
            pad = torch.zeros((n_max - len(v), *v.shape[1:]), dtype=v.dtype, device=v.device)
            gathered = self.all_gather(torch.cat([v, pad])).flatten(0, 1)  # (world * n_max, ...)
            if valid is None:
                mask = torch.zeros(n_max, dtype=torch.uint8, device=v.device)  # gloo: no bool
                mask[: len(v)] = 1
                valid = self.all_gather(mask).flatten(0, 1).bool()
            out[k] = gathered[valid]
        order = torch.argsort(out["user"])
        return {k: v[order] for k, v in out.items()}

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")


ITEM_SLICES = ("cold", "warm")


def item_slice_metrics(
    raw: dict[str, Tensor], ks: list[int], metrics: tuple[str, ...]
) -> dict[str, Tensor]:
    """Per-user metrics with the targets restricted to cold items and to warm items:
    ``{"cold/ndcg@10": (U,), "warm/ndcg@10": (U,), ...}``, NaN for a user without a target in
    the slice. The ranking is the full one (every item, seen items masked): only which ranked
    items count as hits, and how many items are relevant, change.

    Args:
        raw: :meth:`RecModule.evaluate_batch` results: ``_hits`` (U, K), ``_n_rel`` (U,),
            ``_top_cold`` (U, K) whether each ranked item is cold, ``_n_rel_cold`` (U,).
    """
    hits, on_cold = raw["_hits"].bool(), raw["_top_cold"].bool()
    n_cold = raw["_n_rel_cold"].to(raw["_n_rel"].dtype)
    out: dict[str, Tensor] = {}
    for name, h, n in (
        ("cold", hits & on_cold, n_cold),
        ("warm", hits & ~on_cold, raw["_n_rel"] - n_cold),
    ):
        rows = n > 0  # a user counts in a slice with at least one target there
        for key, v in ranking_metrics(h[rows], n[rows], ks, metrics).items():
            full = torch.full(rows.shape, float("nan"), dtype=v.dtype, device=v.device)
            out[f"{name}/{key}"] = full.masked_scatter(rows, v)
    return out


def stage_means(per_user: dict[str, Tensor]) -> dict[str, float]:
    """A stage's metrics: the mean over its users of each per-user value; an item slice's
    (``cold/...``, ``warm/...``) over the users with a target in the slice, with their number
    as ``<slice>/n_users`` (a slice without users reports only that count)."""
    means: dict[str, float] = {}
    counted: set[str] = set()
    for k, v in per_user.items():
        prefix, sep, _ = k.rpartition("/")
        if not sep:
            means[k] = float(v.double().mean())
            continue
        present = ~torch.isnan(v)
        if prefix not in counted:
            means[f"{prefix}/n_users"] = int(present.sum())
            counted.add(prefix)
        if present.any():
            means[k] = float(v[present].double().mean())
    return means


def _concat(outs: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Per-chunk evaluation results joined along the user axis, key by key."""
    return {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
