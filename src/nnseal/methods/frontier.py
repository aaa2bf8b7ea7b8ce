"""Adversarial Frontier Stitching: a zero-bit watermark for proving ownership through the labels of a
remote model (Le Merrer, Pérez & Trédan, arXiv 1711.01894; algorithm in papers.md §2).

The key is made of FGSM examples (one L∞ step of size ε, clipped to [0, 1]) of correctly classified
training inputs: half *true adversaries* (the step flipped the label), half *false adversaries*
(still correct, but pushed towards the frontier), all labelled with their ORIGINAL class. The model
is fine-tuned on the clean data plus the key (repeated ``boost`` times) until it gets every key
right, so the frontier is "stitched" around the key. A model that was not watermarked should get
about half of the key right; :func:`nnseal.watermark.verify_watermark` decides (on a null calibrated
with :func:`nnseal.watermark.calibrate_key`: in practice they get more than half right).

ε = ``"auto"`` (the default) starts at the paper's 0.25 and, when that cannot form a balanced key
(on 8×8 digits 0.25 flips almost every input, leaving too few false adversaries), multiplies it by
0.8 — or by 1.25 when too few inputs flip — up to :data:`AUTO_EPSILON_TRIES` times; the ε used is the
key's ``params["epsilon"]`` and the ones tried ``params["epsilon_tried"]``. A number is used as is.

Example::

    marked, key, report = FrontierStitching(key_size=100).embed(model, train, test=test)
    key, null = calibrate_key(key, train)   # nnseal.watermark: without a null no claim is made
    key.save("model.key.nnseal", hmac_key=b"secret")
    verify_watermark(key, TorchTarget(marked)).status   # Ownership.WATERMARKED
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from nnseal.errors import NnsealError
from nnseal.fingerprint import Fingerprint
from nnseal.grid import to_grid
from nnseal.models.architectures import check_data
from nnseal.models.io import model_id
from nnseal.models.train import evaluate_accuracy, fit, predict_logits
from nnseal.targets.local import TorchTarget

if TYPE_CHECKING:
    from nnseal.data import Dataset

METHOD = "frontier-stitching"
AUTO_EPSILON_START = 0.25
"""Where ``epsilon="auto"`` starts: the paper's (and WRT's) ε."""
AUTO_EPSILON_TRIES = 12
"""Most ε values ``epsilon="auto"`` tries (0.25 × 0.8^k down to 0.0215; a LeNet on 8,000 CIFAR-10 images
needed the ninth, 0.042)."""
AUTO_EPSILON_FACTOR = 0.8
"""The step of the search: ε × 0.8 if too few inputs stay correct, ε / 0.8 if too few flip."""


class UnbalancedKey(NnsealError):
    """No ε tried forms a balanced key (ℓ/2 inputs the step flips, ℓ/2 it does not)."""


class _Unbalanced(Exception):
    """No balanced key at this ε; ``hint``: which way ε should move ("larger" or "smaller")."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


def fgsm(model: nn.Module, x: np.ndarray, y: np.ndarray, epsilon: float, batch_size: int = 256) -> np.ndarray:
    """One signed-gradient step of size ``epsilon`` that raises the cross-entropy of (x, y), clipped to
    the pixel box [0, 1] (the model sees the same range at training and at verification)."""
    model.eval()
    out = []
    for i in range(0, len(x), batch_size):
        xb = torch.as_tensor(x[i : i + batch_size], dtype=torch.float32).requires_grad_(True)
        loss = nn.functional.cross_entropy(model(xb), torch.as_tensor(y[i : i + batch_size]), reduction="sum")
        (grad,) = torch.autograd.grad(loss, xb)
        out.append((xb.detach() + epsilon * grad.sign()).clamp_(0.0, 1.0).numpy())
    return np.concatenate(out).astype(np.float32)


def _label_accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    return float((predict_logits(model, x).argmax(1).numpy() == y).mean())


def key_accuracy(model: nn.Module, key: Fingerprint) -> float:
    """Share of the key's inputs that ``model`` (white-box) labels with the key's labels."""
    if key.labels is None:
        raise NnsealError("this fingerprint has no labels: it is not a watermark key")
    return _label_accuracy(model, key.queries, key.labels)


@dataclass
class EmbedReport:
    """What embedding did: the key's make-up, how long fine-tuning took, and what it cost."""

    key_size: int
    epsilon: float
    epsilon_tried: list[float]
    candidates: int
    true_available: int
    false_available: int
    key_accuracy_before: float
    key_accuracy_after: float
    epochs: float
    steps: int
    accuracy_before: float | None
    accuracy_after: float | None
    seconds: float

    @property
    def accuracy_cost_pp(self) -> float | None:
        """Clean test accuracy lost, in percentage points (negative: it improved)."""
        if self.accuracy_before is None or self.accuracy_after is None:
            return None
        return 100 * (self.accuracy_before - self.accuracy_after)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "accuracy_cost_pp": self.accuracy_cost_pp}


class FrontierStitching:
    """Embed a frontier-stitching watermark.

    Args:
        key_size: ℓ, the number of key inputs (even: ℓ/2 true + ℓ/2 false adversaries). Paper: 100.
        epsilon: FGSM step in [0, 1] pixel units (paper and WRT: 0.25), or ``"auto"``: 0.25, or the
            nearest ε on a ×0.8 grid that forms a balanced key (module docstring).
        pool_factor: candidates drawn per key input (WRT ``key_expansion_factor``: 10); the pool
            doubles until both kinds are found, up to every correctly classified input.
        boost: times the key is repeated in the fine-tuning stream (WRT ``boost_factor``: 10).
        epochs: most fine-tuning epochs over clean data + boosted key (WRT: 5).
        checks_per_epoch: how often the key accuracy is checked; stitching stops as soon as it
            is 1.0 (WRT checks once per epoch; checking more often stops earlier, costing less
            clean accuracy).
        settle: epochs of further fine-tuning on the same stream once every key is right (WRT: 0,
            it stops there). A key learnt only just is forgotten by the first light fine-tune (on
            GTSRB a light FTAL left 0.67 of the key right without settling, 0.85 after 2 epochs; one
            run each). A key input lost while settling is stitched again within ``epochs``; if that
            budget is spent, the model goes back to its last state with every key right.
        lr, batch_size, optimizer: of the fine-tuning. Adam 1e-3 is the reference models' training
            rate (WRT also fine-tunes at the training rate); at 1e-4 a 100-key took all 5 epochs on
            10k MNIST images and did not stitch on digits.
        seed: draws the candidates and orders the fine-tuning.
    """

    name = METHOD

    def __init__(
        self,
        *,
        key_size: int = 100,
        epsilon: float | str = "auto",
        pool_factor: int = 10,
        boost: int = 10,
        epochs: float = 5.0,
        checks_per_epoch: int = 4,
        settle: float = 2.0,
        lr: float = 1e-3,
        batch_size: int = 64,
        optimizer: str = "adam",
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        if key_size < 2 or key_size % 2:
            raise ValueError(f"key_size must be an even number >= 2, got {key_size}")
        if epsilon != "auto" and (
            isinstance(epsilon, (str, bool)) or not isinstance(epsilon, (int, float)) or not 0 < epsilon <= 1
        ):
            raise ValueError(f"epsilon must be 'auto' or in (0, 1] (pixel units), got {epsilon!r}")
        if pool_factor < 1 or boost < 1 or checks_per_epoch < 1:
            raise ValueError("pool_factor, boost and checks_per_epoch must be >= 1")
        if epochs <= 0:
            raise ValueError(f"epochs must be > 0, got {epochs}")
        if not settle >= 0:
            raise ValueError(f"settle must be >= 0 epochs, got {settle}")
        self.key_size, self.epsilon, self.pool_factor, self.boost = (
            int(key_size),
            epsilon if epsilon == "auto" else float(epsilon),
            pool_factor,
            boost,
        )
        self.epochs, self.checks_per_epoch, self.lr = float(epochs), int(checks_per_epoch), float(lr)
        self.settle = float(settle)
        self.batch_size, self.optimizer, self.seed, self.progress = batch_size, optimizer, int(seed), progress

    def config(self) -> dict[str, Any]:
        return {
            "key_size": self.key_size,
            "epsilon": self.epsilon,
            "pool_factor": self.pool_factor,
            "boost": self.boost,
            "epochs": self.epochs,
            "checks_per_epoch": self.checks_per_epoch,
            "settle": self.settle,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "optimizer": self.optimizer,
            "seed": self.seed,
        }

    def __repr__(self) -> str:
        return f"FrontierStitching({', '.join(f'{k}={v!r}' for k, v in self.config().items())})"

    def make_key(self, model: nn.Module, data: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
        """Key inputs, their original labels, which are true adversaries, and how they were found
        (``epsilon``: the ε used, ``epsilon_tried``: every ε tried, in order)."""
        correct = np.flatnonzero(predict_logits(model, data.x).argmax(1).numpy() == data.y)
        if len(correct) < self.key_size:
            raise NnsealError(
                f"only {len(correct)} inputs are classified correctly; the key needs {self.key_size}"
            )
        auto = self.epsilon == "auto"
        eps, tried, direction = AUTO_EPSILON_START if auto else float(self.epsilon), [], 0
        while True:
            tried.append(eps)
            try:
                x, y, flipped, info = self._key_at(model, data, correct, eps)
            except _Unbalanced as e:
                failure = e
            else:
                return x, y, flipped, {**info, "epsilon": eps, "epsilon_tried": tried}
            step = -1 if failure.hint == "smaller" else 1  # too few false adversaries: a smaller ε
            nxt = round(eps * AUTO_EPSILON_FACTOR**-step, 4)
            turned = step == -direction  # no ε between the last two forms a balanced key
            if not auto or turned or len(tried) >= AUTO_EPSILON_TRIES or not 0 < nxt <= 1 or nxt == eps:
                break
            eps, direction = nxt, step
        if not auto:
            raise UnbalancedKey(f"{failure} (try a {failure.hint} epsilon)")
        raise UnbalancedKey(
            f"{failure}; no epsilon tried ({', '.join(f'{e:g}' for e in tried)}) forms a balanced key "
            f"of {self.key_size} (try a smaller key, or more training data)"
        )

    def _key_at(
        self, model: nn.Module, data: Dataset, correct: np.ndarray, epsilon: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
        """The key at one ε; :class:`_Unbalanced` (saying which way ε should move) if there is none."""
        rng = np.random.default_rng(self.seed)
        order = rng.permutation(correct)
        half = self.key_size // 2
        pool = min(len(order), self.pool_factor * self.key_size)
        done = 0
        xs, ys, flipped, src = [], [], [], []
        while True:
            idx = order[done:pool]
            x_adv = to_grid(fgsm(model, data.x[idx], data.y[idx], epsilon), data.levels)  # valid images
            xs.append(x_adv)
            ys.append(data.y[idx])
            flipped.append(predict_logits(model, x_adv).argmax(1).numpy() != data.y[idx])
            src.append(idx)
            done = pool
            n_true = int(sum(f.sum() for f in flipped))
            n_false = done - n_true
            if (n_true >= half and n_false >= half) or pool == len(order):
                break
            pool = min(len(order), 2 * pool)
        if n_true < half or n_false < half:
            raise _Unbalanced(
                f"epsilon={epsilon:g} gives {n_true} true and {n_false} false adversaries among {done} "
                f"correctly classified inputs; the key needs {half} of each",
                "larger" if n_true < half else "smaller",
            )
        x_all, y_all, f_all, s_all = (np.concatenate(a) for a in (xs, ys, flipped, src))
        pick = np.concatenate([np.flatnonzero(f_all)[:half], np.flatnonzero(~f_all)[:half]])
        pick = pick[rng.permutation(len(pick))]  # the key's order reveals nothing about its kinds
        info = {"candidates": done, "true_available": n_true, "false_available": n_false}
        return x_all[pick], y_all[pick], f_all[pick], {**info, "source_indices": s_all[pick].tolist()}

    def embed(
        self, model: nn.Module, data: Dataset, *, test: Dataset | None = None
    ) -> tuple[nn.Module, Fingerprint, EmbedReport]:
        """Watermark a copy of ``model`` (trained on ``data``); ``model`` itself is left unchanged.

        Returns the watermarked model, the key (a fingerprint with ``method="frontier-stitching"``
        whose ``labels`` are the key's original labels) and a report; the clean-accuracy cost is
        measured on ``test`` when given.
        """
        check_data(model, data.input_shape, len(data.classes))
        t0 = time.perf_counter()
        marked = copy.deepcopy(model).eval()
        acc_before = evaluate_accuracy(marked, test) if test is not None else None
        x_key, y_key, true_adv, info = self.make_key(marked, data)
        before = _label_accuracy(marked, x_key, y_key)
        x = np.concatenate([data.x, np.repeat(x_key, self.boost, axis=0)])
        y = np.concatenate([data.y, np.repeat(y_key, self.boost)])
        chunk = 1 / self.checks_per_epoch
        stitched, settled, steps, after = 0.0, 0.0, 0, before
        last_learnt: tuple[dict, float, int] | None = None
        steps_per_epoch = -(-len(x) // self.batch_size)
        total = self.epochs + self.settle
        bar = tqdm(total=total, desc="stitch", unit="epoch", disable=not self.progress, leave=False)
        while True:  # stitch until every key is right, then settle; re-stitch if settling loses one
            if after < 1.0 and stitched < self.epochs - 1e-9:
                step = min(chunk, self.epochs - stitched)
                stitched += step
            elif after == 1.0 and settled < self.settle - 1e-9:
                step = min(chunk, self.settle - settled)
                settled += step
                bar.set_description("settle")
            else:
                break
            fit(
                marked,
                x,
                y,
                epochs=step,
                lr=self.lr,
                batch_size=self.batch_size,
                optimizer=self.optimizer,
                seed=self.seed + round((stitched + settled - step) * self.checks_per_epoch),
            )
            steps += max(1, round(step * steps_per_epoch))  # as fit counts them
            after = _label_accuracy(marked, x_key, y_key)
            if after == 1.0:
                last_learnt = (copy.deepcopy(marked.state_dict()), stitched + settled, steps)
            bar.update(step)
            bar.set_postfix(key_accuracy=f"{after:.2f}")
        bar.close()
        epochs = stitched + settled
        # settling lost a key and the stitching budget is spent: back to when every key was right
        if after < 1.0 and last_learnt is not None:
            marked.load_state_dict(last_learnt[0])
            epochs, steps, after = last_learnt[1], last_learnt[2], 1.0
        probs = TorchTarget(marked).predict(x_key)
        key = Fingerprint(
            queries=x_key,
            probabilities=probs,
            labels=y_key,
            specs=["top1"],
            levels=data.levels,
            model_id=model_id(marked),
            method=self.name,
            params={
                **self.config(),
                "epsilon": info["epsilon"],
                "epsilon_requested": self.epsilon,
                "epsilon_tried": info["epsilon_tried"],
            },
            provenance={
                "dataset": data.name,
                "source_model_id": model_id(model),
                "true_adversary": true_adv.astype(bool).tolist(),
                "key_accuracy_before": before,
                "key_accuracy_after": after,
                "torch": torch.__version__,
                **{k: v for k, v in info.items() if not k.startswith("epsilon")},
            },
        )
        report = EmbedReport(
            key_size=self.key_size,
            epsilon=info["epsilon"],
            epsilon_tried=info["epsilon_tried"],
            candidates=info["candidates"],
            true_available=info["true_available"],
            false_available=info["false_available"],
            key_accuracy_before=before,
            key_accuracy_after=after,
            epochs=epochs,
            steps=steps,
            accuracy_before=acc_before,
            accuracy_after=evaluate_accuracy(marked, test) if test is not None else None,
            seconds=time.perf_counter() - t0,
        )
        return marked, key, report
