"""Query detectors a dishonest provider can run, to measure stealth as the adversary would.

The provider sees every input it is sent and holds its own copy of the model. Each detector scores an
input (higher = more likely a verification query) and is judged by its ROC AUC on natural test
traffic (negatives) against the queries a method sends (positives); 0.5 means the queries cannot be
told apart from traffic. The four detectors of the threat model:

* ``grid`` — the fraction of values off the data's pixel grid (natural images: 0);
* ``statistics`` — a logistic regression on simple input statistics, trained on fingerprints the
  provider generates itself with nnseal from its own model and data against natural inputs;
* ``sensitivity`` — ‖∂f/∂W‖² of the input on the provider's model (last layer, as the SSF paper);
* ``margin`` — one minus the top-1/top-2 probability gap on the provider's model (inputs near a
  decision boundary).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch import nn

from nnseal.grid import off_grid_fraction
from nnseal.models.inference import probabilities

DETECTORS: tuple[str, ...] = ("grid", "statistics", "sensitivity", "margin")


def roc_auc(negatives: Sequence[float] | np.ndarray, positives: Sequence[float] | np.ndarray) -> float:
    """P(a positive scores above a negative), ties counting half."""
    from sklearn.metrics import roc_auc_score

    neg, pos = np.asarray(negatives, dtype=np.float64), np.asarray(positives, dtype=np.float64)
    if neg.size == 0 or pos.size == 0:
        raise ValueError("ROC AUC needs at least one negative and one positive score")
    labels = np.concatenate([np.zeros(neg.size), np.ones(pos.size)])
    return float(roc_auc_score(labels, np.concatenate([neg, pos])))


def margin_score(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """1 − (p_top1 − p_top2) on the provider's model: high near a decision boundary."""
    p = np.sort(probabilities(model, x), axis=1)
    return 1.0 - (p[:, -1] - p[:, -2]).astype(np.float64)


def sensitivity_score(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """log ‖∂softmax/∂W_last‖² on the provider's model (the SSF paper's objective)."""
    from nnseal.methods.sensitive import sensitivity

    return np.log(sensitivity(model, x) + 1e-300)


def input_statistics(x: np.ndarray, levels: int) -> np.ndarray:
    """Per input, statistics a provider can compute without a model: moments, extremes, the share of
    saturated pixels, distinct values, smoothness (neighbour differences), high-frequency energy, an
    8-bin histogram, and the share of values off the grid."""
    x = np.asarray(x, dtype=np.float64)
    flat = x.reshape(len(x), -1)
    dh = np.abs(np.diff(x, axis=-1)).reshape(len(x), -1).mean(1)
    dv = np.abs(np.diff(x, axis=-2)).reshape(len(x), -1).mean(1)
    lap = 4 * x[..., 1:-1, 1:-1] - x[..., :-2, 1:-1] - x[..., 2:, 1:-1] - x[..., 1:-1, :-2] - x[..., 1:-1, 2:]
    hist = np.stack([np.histogram(r, bins=8, range=(0, 1))[0] / r.size for r in flat])
    distinct = np.array([len(np.unique(r)) / r.size for r in flat])
    return np.column_stack(
        [
            flat.mean(1),
            flat.std(1),
            flat.min(1),
            flat.max(1),
            (flat <= 0).mean(1),
            (flat >= 1).mean(1),
            distinct,
            dh,
            dv,
            (lap**2).reshape(len(x), -1).mean(1),
            hist,
            off_grid_fraction(x, levels),
        ]
    )


@dataclass
class StatisticsDetector:
    """Logistic regression on :func:`input_statistics`, fitted on the provider's own queries against
    natural inputs (balanced classes)."""

    levels: int

    def fit(self, natural: np.ndarray, queries: np.ndarray, seed: int = 0) -> StatisticsDetector:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        f = np.concatenate([input_statistics(natural, self.levels), input_statistics(queries, self.levels)])
        y = np.concatenate([np.zeros(len(natural)), np.ones(len(queries))])
        self.model_ = make_pipeline(
            StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced", random_state=seed)
        ).fit(f, y)
        return self

    def score(self, x: np.ndarray) -> np.ndarray:
        return self.model_.decision_function(input_statistics(x, self.levels))


@dataclass(frozen=True)
class StealthScores:
    """Each detector's ROC AUC, natural traffic vs one method's queries (0.5: indistinguishable)."""

    auc: dict[str, float]
    queries: int
    traffic: int

    def worst(self) -> float:
        return max(self.auc.values())

    def to_dict(self) -> dict[str, object]:
        return {"auc": self.auc, "queries": self.queries, "traffic": self.traffic, "worst": self.worst()}


def stealth_scores(
    model: nn.Module,
    traffic: np.ndarray,
    queries: np.ndarray,
    *,
    levels: int,
    provider_natural: np.ndarray,
    provider_queries: np.ndarray,
    seed: int = 0,
) -> StealthScores:
    """The four detectors' AUCs for ``queries`` against natural ``traffic``. ``provider_queries``
    (made by the provider with the same method from its own data, ``provider_natural``) train the
    statistics detector; the provider's model is ``model`` itself (it serves the owner's model)."""
    stats = StatisticsDetector(levels).fit(provider_natural, provider_queries, seed)
    scorers = {
        "grid": lambda x: off_grid_fraction(x, levels),
        "statistics": stats.score,
        "sensitivity": lambda x: sensitivity_score(model, x),
        "margin": lambda x: margin_score(model, x),
    }
    auc = {name: roc_auc(f(traffic), f(queries)) for name, f in scorers.items()}
    return StealthScores(auc, len(queries), len(traffic))
