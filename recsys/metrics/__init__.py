"""Evaluation metrics: pure tensor functions."""

from recsys.metrics.ranking import METRICS, ranking_metrics, topk_hits

__all__ = ["METRICS", "ranking_metrics", "topk_hits"]
