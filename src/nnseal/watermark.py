"""Ownership verification of a frontier-stitching watermark through any black-box target.

Decision rule (papers.md §2): query the key, count the errors m (answers that differ from the key's
labels), and claim the watermark iff m < θ, where θ is the smallest t with P_null(M ≤ t) ≥ α and M is
the number of errors a model that is NOT watermarked makes. The level α is fixed before querying
(default :data:`DEFAULT_ALPHA` = 1e-3: a claim is an accusation, so at most one innocent model in a
thousand may be claimed, and a 100-key, or a 50-key, on digits still reaches it).

The paper's null is Binomial(ℓ, 1/2): each key answered correctly with probability 1/2. It is wrong
in practice — independently trained models agree with the key more often (0.45–0.82 measured on
digits, depending on ε), and at α = 0.05 it claimed 3 of 3 independent digits LeNets. So the null is
*calibrated* on reference models known not to be watermarked (:func:`calibrate_null`, a
beta-binomial that also covers model-to-model spread); ``watermark embed`` trains them and stores the
fit in the signed key (:func:`attach_null`, ``provenance["null"]``, read back by :func:`stored_null`,
which treats it as hostile input). A claim on a calibrated null is made conservative twice, because
R reference models say little about tails far below 1/R that the beta-binomial extrapolates:

* the p-value and θ are computed with the fitted mean key accuracy replaced by its one-sided 95 %
  upper confidence bound (Student t over the R accuracies, the fitted overdispersion kept), and
* the claim also needs a key accuracy above the best reference model's by more than ``margin``
  (:data:`DEFAULT_MARGIN`, 5 points): an empirical floor that holds whatever the tail shape.

θ is the smaller of the two. A key with no calibrated null can still be verified under the paper's
null (``uncalibrated="paper"``, the library default for compatibility, reported as
``null_source="paper"``), or never claim (``uncalibrated="inconclusive"``, what the CLI does unless
``--paper-null`` is given).

Keys that got no valid answer (failures, or a budget smaller than the key) are unknown. The verdict
is *watermarked* only if m stays below θ even with every unknown key counted as an error, and
*not-watermarked* only if m ≥ θ already; anything between is *inconclusive* — never a claim either
way. The sequential variant stops as soon as one of the two is certain (the same decision as the
full test, so the same error rates, with fewer queries). The reported p-value counts unknown keys
as errors, so it is exact when every key was answered and conservative otherwise.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from torch import nn

from nnseal.errors import FingerprintError, NnsealError
from nnseal.fingerprint import Fingerprint
from nnseal.methods.frontier import METHOD
from nnseal.query import Answers, Decision, Verdict, evidence, query
from nnseal.signing import NOT_LOADED
from nnseal.targets.base import Target
from nnseal.targets.local import TorchTarget

if TYPE_CHECKING:
    from nnseal.data import Dataset

DEFAULT_ALPHA = 1e-3
"""Level of an ownership claim: a claim accuses someone, so at most 1 in 1,000 innocent models."""
DEFAULT_MARGIN = 0.05
"""A claim on a calibrated null needs a key accuracy above the best reference model's by more than this."""
DEFAULT_REFERENCES = 8
"""Reference models ``watermark embed`` trains to calibrate the null (about 10 s on digits, 2 cores)."""
REFERENCE_ARCHITECTURES = ("lenet", "mlp")
"""Their architectures, taken in turn (so 8 references are 4 LeNets and 4 MLPs)."""
REFERENCE_EPOCHS = 20.0
"""Their training epochs (``nnseal train``'s default)."""
REFERENCE_SEED = 1000
"""The first reference's seed; the i-th (0-based) has ``REFERENCE_SEED + i``."""
CONFIDENCE = 0.95
"""One-sided confidence of the upper bound on the null's mean key accuracy."""
MAX_REFERENCES = 10_000
"""Most reference models a stored null may list (a bound on hostile input)."""

_T95 = (6.314, 2.920, 2.353, 2.132, 2.015, 1.943, 1.895, 1.860, 1.833, 1.812, 1.796, 1.782, 1.771,
        1.761, 1.753, 1.746, 1.740, 1.734, 1.729, 1.725, 1.721, 1.717, 1.714, 1.711, 1.708, 1.706,
        1.703, 1.701, 1.699, 1.697)  # fmt: skip
"""Student t 95 % quantiles for 1..30 degrees of freedom."""


def _t95(df: int) -> float:
    """The 95 % quantile of Student's t with ``df`` degrees of freedom (table; Cornish–Fisher above 30)."""
    if df < 1:
        raise ValueError("need at least 1 degree of freedom")
    if df <= len(_T95):
        return _T95[df - 1]
    z = 1.6448536269514722
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


class Ownership(Decision):
    WATERMARKED = "watermarked"
    NOT_WATERMARKED = "not-watermarked"
    INCONCLUSIVE = "inconclusive"

    @property
    def exit_code(self) -> int:
        """CLI exit code (2 is reserved for usage and input errors), as for tamper verification."""
        return {"watermarked": 0, "not-watermarked": 1, "inconclusive": 3}[self.value]


@dataclass(frozen=True)
class NullModel:
    """How many of ℓ keys a model that is not watermarked answers correctly.

    ``binomial``: each key independently with probability ``p`` (the paper: 1/2).
    ``beta-binomial``: the per-model probability varies as Beta(a, b) — fitted by
    :meth:`calibrate` when null models spread more than a binomial allows.
    ``key_accuracies``: the calibration models' key accuracies (empty for a null not calibrated);
    a calibrated null is tested through :meth:`upper_bound` and the margin rule (module docstring).
    """

    kind: Literal["binomial", "beta-binomial"] = "binomial"
    p: float = 0.5
    a: float = 0.0
    b: float = 0.0
    calibration_models: int = 0
    key_accuracies: tuple[float, ...] = ()

    @classmethod
    def calibrate(cls, key_accuracies: Sequence[float], key_size: int) -> NullModel:
        """Method-of-moments fit to the key accuracies of ≥ 2 models known not to be watermarked.

        The fit is only as good as the null models are representative of an innocent model
        (architectures, data, training); with n models, tail probabilities far below 1/n are
        extrapolated by the beta-binomial shape (which is why :func:`verify_watermark` tests a
        calibrated null conservatively).
        """
        acc = np.asarray(key_accuracies, dtype=np.float64)
        if acc.ndim != 1 or len(acc) < 2 or not ((acc >= 0) & (acc <= 1)).all():
            raise ValueError("calibration needs the key accuracies (in [0, 1]) of at least 2 null models")
        n = int(key_size)
        kept = tuple(float(a) for a in acc)
        counts = np.round(acc * n)
        p = float(counts.mean() / n)
        if p in (0.0, 1.0):
            return cls("binomial", p, calibration_models=len(acc), key_accuracies=kept)
        rho = (counts.var(ddof=1) / (n * p * (1 - p)) - 1) / max(n - 1, 1)
        if rho <= 0:  # no more spread than a binomial: the binomial at the pooled rate
            return cls("binomial", p, calibration_models=len(acc), key_accuracies=kept)
        total = 1 / rho - 1
        return cls("beta-binomial", p, p * total, (1 - p) * total, len(acc), kept)

    @property
    def calibrated(self) -> bool:
        """Fitted to the key accuracies of at least 2 reference models."""
        return len(self.key_accuracies) >= 2

    def upper_bound(self, confidence: float = CONFIDENCE) -> NullModel:
        """The same null with its mean key accuracy raised to the one-sided ``confidence`` (95 %)
        Student-t upper bound over the calibration models' accuracies; the overdispersion (a + b) is
        kept. A null that is not calibrated is returned as it is."""
        if not self.calibrated:
            return self
        if confidence != CONFIDENCE:
            raise ValueError(f"only the {CONFIDENCE:.0%} bound is implemented")
        acc = np.asarray(self.key_accuracies, dtype=np.float64)
        sd = float(acc.std(ddof=1))
        p = min(1.0, self.p + _t95(len(acc) - 1) * sd / math.sqrt(len(acc)))
        if self.kind == "binomial" or p >= 1.0:
            return dataclasses.replace(self, kind="binomial", p=p, a=0.0, b=0.0)
        total = self.a + self.b
        return dataclasses.replace(self, p=p, a=p * total, b=(1 - p) * total)

    def correct_pmf(self, n: int) -> np.ndarray:
        """P(C = c) for c = 0..n correct answers out of n keys."""
        c = np.arange(n + 1)
        if self.kind == "binomial":
            logs = [math.log(math.comb(n, k)) for k in c]
            with np.errstate(divide="ignore", invalid="ignore"):  # p = 0 or 1: 0 · log 0 counts as 0
                lp, lq = np.log(self.p), np.log1p(-self.p)
                terms = np.array(logs) + np.where(c > 0, c * lp, 0.0) + np.where(c < n, (n - c) * lq, 0.0)
            return np.exp(terms)
        lbeta = math.lgamma(self.a) + math.lgamma(self.b) - math.lgamma(self.a + self.b)
        pmf = [
            math.exp(
                math.log(math.comb(n, k))
                + math.lgamma(k + self.a)
                + math.lgamma(n - k + self.b)
                - math.lgamma(n + self.a + self.b)
                - lbeta
            )
            for k in c
        ]
        return np.array(pmf)

    def error_cdf(self, n: int) -> np.ndarray:
        """P(M ≤ t) for t = 0..n errors (M = n − C)."""
        return np.minimum(np.cumsum(self.correct_pmf(n)[::-1]), 1.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "p": self.p,
            "a": self.a,
            "b": self.b,
            "calibration_models": self.calibration_models,
            "key_accuracies": list(self.key_accuracies),
        }

    @classmethod
    def from_dict(cls, d: Any, key_size: int) -> NullModel:
        """A null read from a file, checked as hostile input: every field's type and range, and that the
        stored fit is the fit of the stored key accuracies. :class:`FingerprintError` on any problem."""

        def bad(why: str) -> FingerprintError:
            return FingerprintError(f"the key's stored null is invalid: {why}")

        def real(name: str) -> float:
            v = d.get(name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise bad(f"{name} must be a finite number, got {str(v)[:40]!r}")
            return float(v)

        if not isinstance(d, dict):
            raise bad(f"it must be a JSON object, got {type(d).__name__}")
        known = {"kind", "p", "a", "b", "calibration_models", "key_accuracies", "references"}
        unknown = sorted(str(k)[:40] for k in d if k not in known)
        if unknown:
            raise bad(f"unknown field(s) {', '.join(unknown[:5])}")
        kind = d.get("kind")
        if kind not in ("binomial", "beta-binomial"):
            raise bad(f"kind must be 'binomial' or 'beta-binomial', got {str(kind)[:40]!r}")
        p, a, b = real("p"), real("a"), real("b")
        if not 0 <= p <= 1:
            raise bad(f"p must be in [0, 1], got {p}")
        if a < 0 or b < 0 or (kind == "beta-binomial" and (a <= 0 or b <= 0)):
            raise bad(f"a and b must be > 0 for a beta-binomial (>= 0 otherwise), got a={a}, b={b}")
        models = d.get("calibration_models")
        if type(models) is not int or not 2 <= models <= MAX_REFERENCES:
            raise bad(
                f"calibration_models must be an integer in 2..{MAX_REFERENCES}, got {str(models)[:40]!r}"
            )
        accs = d.get("key_accuracies")
        if not isinstance(accs, list) or len(accs) != models:
            raise bad(f"key_accuracies must list the {models} reference models' key accuracies")
        for v in accs:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:  # NaN fails too
                raise bad(f"key accuracies must be numbers in [0, 1], got {str(v)[:40]!r}")
        refs = d.get("references", [])
        if not isinstance(refs, list) or (refs and len(refs) != models):
            raise bad(f"references must list the {models} reference models")
        for r in refs:
            if not isinstance(r, dict) or not all(
                isinstance(v, (str, int, float)) and not (isinstance(v, float) and not math.isfinite(v))
                for v in r.values()
            ):
                raise bad("each reference must be an object of strings and finite numbers")
        refit = cls.calibrate(accs, key_size)
        stored = cls(kind, p, a, b, models, tuple(float(v) for v in accs))
        if refit.kind != kind or not all(
            math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9)
            for x, y in ((refit.p, p), (refit.a, a), (refit.b, b))
        ):
            raise bad(
                f"the fit ({kind} p={p:.4g} a={a:.4g} b={b:.4g}) is not the fit of its own key accuracies "
                f"({refit.kind} p={refit.p:.4g} a={refit.a:.4g} b={refit.b:.4g}): it was edited"
            )
        return stored


PAPER_NULL = NullModel()


def threshold(key_size: int, alpha: float = 0.05, null: NullModel = PAPER_NULL) -> int:
    """θ = min{t : P_null(M ≤ t) ≥ α}; the watermark is claimed iff the errors m < θ."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if key_size < 1:
        raise ValueError(f"key_size must be >= 1, got {key_size}")
    return int(np.argmax(null.error_cdf(key_size) >= alpha - 1e-12))


def p_value(errors: int, key_size: int, null: NullModel = PAPER_NULL) -> float:
    """P_null(M ≤ errors): how likely a model that is not watermarked makes this few errors."""
    return float(null.error_cdf(key_size)[errors])


@dataclass(frozen=True)
class ClaimRule:
    """How many key errors a claim tolerates: fewer than ``theta`` = min(``theta_null``, ``theta_margin``).

    ``tested``: the null θ and the p-value come from (the calibrated null's upper bound);
    ``theta_margin``: from the margin rule (None for a null that is not calibrated)."""

    key_size: int
    theta: int
    theta_null: int
    theta_margin: int | None
    tested: NullModel
    margin: float | None
    reference_max: float | None

    @property
    def claim_accuracy(self) -> float | None:
        """The least key accuracy (all keys answered) that is claimed; None if no claim is possible."""
        return (self.key_size - self.theta + 1) / self.key_size if self.theta > 0 else None


def claim_rule(key_size: int, alpha: float, null: NullModel, margin: float = DEFAULT_MARGIN) -> ClaimRule:
    """θ for a key of ``key_size`` at level ``alpha``: the null's θ, and for a calibrated null the θ of
    its upper bound, capped by the margin rule (key accuracy > best reference + ``margin``)."""
    if not 0 <= margin < 1:
        raise ValueError(f"margin must be in [0, 1), got {margin}")
    tested = null.upper_bound()
    theta_null = threshold(key_size, alpha, tested)
    if not null.calibrated:
        return ClaimRule(key_size, theta_null, theta_null, None, tested, None, None)
    best = max(null.key_accuracies)
    # errors < key_size·(1 − best − margin)  ⇔  key accuracy > best + margin
    theta_margin = max(0, math.ceil(key_size * (1 - best - margin) - 1e-9))
    return ClaimRule(key_size, min(theta_null, theta_margin), theta_null, theta_margin, tested, margin, best)


@dataclass(kw_only=True)
class OwnershipVerdict(Verdict):
    """Does the target carry the watermark? ``errors`` / ``correct``: key answers that differ from /
    match the key's labels; ``theta``: the claim needs fewer errors than this at level ``alpha``.

    ``null``: the null as given, stored or fitted; ``null_tested``: what ``p_value`` and
    ``theta_null`` come from (its upper bound, for a calibrated null); ``null_source``: ``key`` (stored
    in the key), ``given`` (passed in: ``--calibrate`` or ``--paper-null``) or ``paper`` (the key has
    none: the paper's Binomial(ℓ, 1/2)); ``claim_accuracy``: the least key accuracy claimed."""

    kind: str = "ownership"
    status: Ownership
    alpha: float
    theta: int
    errors: int
    correct: int
    p_value: float
    key_accuracy: float | None
    sequential: bool
    null: dict[str, Any] = field(default_factory=dict)
    null_source: str = "given"
    null_tested: dict[str, Any] = field(default_factory=dict)
    theta_null: int = 0
    theta_margin: int | None = None
    margin: float | None = None
    reference_max: float | None = None
    claim_accuracy: float | None = None


def stored_null(key: Fingerprint) -> NullModel | None:
    """The calibrated null stored in a key (``provenance["null"]``), validated; None if it has none."""
    if "null" not in key.provenance:
        return None
    return NullModel.from_dict(key.provenance["null"], len(key))


def attach_null(key: Fingerprint, null: NullModel, references: Sequence[dict[str, Any]] = ()) -> Fingerprint:
    """A copy of ``key`` carrying ``null`` (and what its reference models were) in ``provenance["null"]``:
    the header is signed, so a saved and signed key's null cannot be changed unnoticed."""
    if not null.calibrated:
        raise ValueError("only a null calibrated on >= 2 reference models can be stored in a key")
    if references and len(references) != null.calibration_models:
        raise ValueError(f"{len(references)} reference descriptions for {null.calibration_models} models")
    stored = {**null.to_dict(), "references": [dict(r) for r in references]}
    NullModel.from_dict(stored, len(key))  # what a verifier will check
    return dataclasses.replace(key, provenance={**key.provenance, "null": stored}, signature=NOT_LOADED)


def reference_key_accuracy(
    key: Fingerprint, reference: Target | nn.Module, batch_size: int | None = None
) -> float:
    """The key accuracy of one reference model (a target, or a torch model queried white-box)."""
    target = reference if isinstance(reference, Target) else TorchTarget(reference)
    answers = query(key, target, batch_size=batch_size, desc="reference")
    idx, got = answers.labels()
    if not len(idx):
        raise NnsealError(f"reference model {target.describe()} answered none of the key's queries")
    return float((got == key.labels[idx]).mean())  # type: ignore[index]


def calibrate_null(key: Fingerprint, references: Sequence[Target | nn.Module]) -> NullModel:
    """Fit the null to ≥ 2 reference models known not to be watermarked (:meth:`NullModel.calibrate`
    on their key accuracies). They should be what an innocent model looks like: trained
    independently on the same task, of more than one architecture."""
    _check_key(key)
    if len(references) < 2:
        raise ValueError(f"calibration needs at least 2 reference models, got {len(references)}")
    return NullModel.calibrate([reference_key_accuracy(key, r) for r in references], len(key))


def train_references(
    data: Dataset,
    *,
    count: int = DEFAULT_REFERENCES,
    architectures: Sequence[str] = REFERENCE_ARCHITECTURES,
    epochs: float = REFERENCE_EPOCHS,
    seed: int = REFERENCE_SEED,
    exclude: Sequence[str] = (),
    progress: bool = False,
) -> list[tuple[dict[str, Any], nn.Module]]:
    """``count`` models trained from scratch on ``data``, architectures in turn, seeds ``seed``,
    ``seed + 1`` …; one whose model id is in ``exclude`` (the owner's source model, say) is skipped
    and the next seed taken. Returns (description, model) pairs."""
    from nnseal.models import train_model
    from nnseal.models.architectures import ARCHITECTURES
    from nnseal.models.io import model_id

    if count < 2:
        raise ValueError(f"calibration needs at least 2 reference models, got {count}")
    if not architectures or any(a not in ARCHITECTURES for a in architectures):
        raise ValueError(
            f"reference architectures must be among {', '.join(ARCHITECTURES)}, got {architectures}"
        )
    out: list[tuple[dict[str, Any], nn.Module]] = []
    s = seed
    while len(out) < count:
        arch = architectures[len(out) % len(architectures)]
        t = time.perf_counter()
        m = train_model(data, arch, epochs=epochs, seed=s, progress=progress)
        mid = model_id(m)
        if mid not in exclude:
            desc = {"name": f"{arch}-s{s}", "arch": arch, "seed": s, "epochs": float(epochs), "model_id": mid}
            out.append(({**desc, "seconds": round(time.perf_counter() - t, 3)}, m))
        s += 1
    return out


def calibrate_key(
    key: Fingerprint,
    data: Dataset | None = None,
    *,
    references: Sequence[Target | nn.Module] = (),
    names: Sequence[str] = (),
    count: int = DEFAULT_REFERENCES,
    architectures: Sequence[str] = REFERENCE_ARCHITECTURES,
    epochs: float = REFERENCE_EPOCHS,
    seed: int = REFERENCE_SEED,
    progress: bool = False,
) -> tuple[Fingerprint, NullModel]:
    """Calibrate ``key``'s null and store it in a copy of the key: on the given ``references`` (named by
    ``names``) if any, else on ``count`` models trained on ``data`` (the owner's training data) by
    :func:`train_references`, never the key's own source or watermarked model."""
    _check_key(key)
    if references:
        descs = [
            {"name": n, "source": "given"}
            for n in (names or [f"reference-{i}" for i in range(len(references))])
        ]
        if len(descs) != len(references):
            raise ValueError("give one name per reference model")
        null = calibrate_null(key, references)
    else:
        if data is None:
            raise ValueError("calibration needs the training data (to train reference models) or references")
        exclude = [str(key.provenance.get("source_model_id", "")), key.model_id]
        trained = train_references(
            data, count=count, architectures=architectures, epochs=epochs, seed=seed, exclude=exclude,
            progress=progress,
        )  # fmt: skip
        null = calibrate_null(key, [m for _, m in trained])
        descs = [{**d, "source": "trained"} for d, _ in trained]
    descs = [{**d, "key_accuracy": a} for d, a in zip(descs, null.key_accuracies, strict=True)]
    return attach_null(key, null, descs), null


KEY_METHODS = (METHOD, "conferrable")
"""Methods whose keys are verified here: a Frontier-Stitching watermark key, or a Conferrable
Adversarial Examples fingerprint (:mod:`nnseal.methods.conferrable`; the same labels-agreement test)."""


def _check_key(key: Fingerprint) -> None:
    if key.method not in KEY_METHODS or key.labels is None:
        raise NnsealError(
            f"not a {METHOD} watermark key or a conferrable fingerprint (method {str(key.method)[:40]!r}, "
            f"labels {'missing' if key.labels is None else 'present'})"
        )
    if key.method != METHOD and not np.array_equal(key.labels, key.probabilities.argmax(1)):
        # a fingerprint's labels are the source's own answers: labels that differ were edited
        raise NnsealError(f"not a valid {key.method} key: its labels are not the source's recorded answers")


def verify_watermark(
    key: Fingerprint,
    target: Target,
    *,
    alpha: float = DEFAULT_ALPHA,
    null: NullModel | None = None,
    uncalibrated: Literal["paper", "inconclusive"] = "inconclusive",
    margin: float = DEFAULT_MARGIN,
    sequential: bool = False,
    budget: int | None = None,
    batch_size: int | None = None,
    progress: bool = False,
) -> OwnershipVerdict:
    """Query ``target`` with the watermark key and decide at level ``alpha`` (see module docstring).

    Args:
        null: the distribution of correct answers of a model that is not watermarked; None: the
            null stored in the key (:func:`stored_null`), or if it has none, see ``uncalibrated``.
        uncalibrated: with no null given or stored, ``paper`` tests the paper's Binomial(ℓ, 1/2)
            (known to claim independently trained models); ``inconclusive`` reports the key accuracy
            but never decides (what the CLI does unless ``--paper-null``).
        margin: a calibrated null's claim needs a key accuracy above its best reference's by more.
        sequential: query only as many keys as the decision needs; a batch is never larger than
            the fewest further answers that could decide, so no query is wasted.
        budget: most queries to send; keys left unqueried count as unknown.
        batch_size: most queries per ``predict`` call (default: the target's preferred size).
    """
    _check_key(key)
    if uncalibrated not in ("paper", "inconclusive"):
        raise ValueError(f"uncalibrated must be 'paper' or 'inconclusive', got {uncalibrated!r}")
    labels = key.labels
    n = len(key)
    source = "given"
    if null is None:
        null, source = stored_null(key), "key"
        if null is None:
            null, source = PAPER_NULL, "paper"
    rule = claim_rule(n, alpha, null, margin)
    theta = rule.theta
    if theta == 0:
        if rule.theta_null == 0:
            why = (f"even 0 errors are that likely for a model that is not watermarked under this null"
                   f"{' (its 95% upper bound)' if null.calibrated else ''}")  # fmt: skip
        else:
            why = (f"its best reference model already scores {rule.reference_max:.0%}, and a claim needs "
                   f"more than that + margin {margin:g}")  # fmt: skip
        raise NnsealError(
            f"a key of {n} inputs cannot reach alpha={alpha}: {why} (use a longer key or a larger alpha)"
        )

    def tally(answers: Answers) -> tuple[int, int]:
        idx, got = answers.labels()
        correct = int((got == labels[idx]).sum())  # type: ignore[index]
        return len(idx) - correct, correct

    def next_batch(answers: Answers, size: int) -> int:
        errors, correct = tally(answers)
        unknown = n - errors - correct
        if errors >= theta or errors + unknown < theta:
            return 0
        return min(size, max(1, min(theta - errors, unknown - (theta - 1 - errors))))

    answers = query(
        key,
        target,
        budget=budget,
        batch_size=batch_size,
        next_batch=next_batch if sequential else None,
        progress=progress,
        desc="verify watermark",
    )
    errors, correct = tally(answers)
    unknown = n - errors - correct
    pv = p_value(errors + unknown, n, rule.tested)
    bar = f"theta={theta}" + (
        f" (null {rule.theta_null}, margin {rule.theta_margin})" if null.calibrated else ""
    )
    if errors >= theta:
        status = Ownership.NOT_WATERMARKED
        reason = f"{errors} key errors >= {bar}: no evidence of the watermark at alpha={alpha}"
    elif errors + unknown < theta:
        status = Ownership.WATERMARKED
        reason = f"{errors} key errors < {bar}" + (
            f" even if the {unknown} unqueried keys were all wrong" if unknown else ""
        )
    else:
        why = ""
        if answers.failed:
            causes = ", ".join(f"{k}: {v}" for k, v in sorted(answers.problems.items()))
            why = f"{len(answers.failed)} keys got no valid answer ({causes}); first: {answers.reasons[0]}"
        if answers.limit < n:
            why = f"budget allowed {answers.limit} of {n} queries" + (f"; {why}" if why else "")
        status = Ownership.INCONCLUSIVE
        reason = f"{errors} errors with {unknown} keys unknown could end either side of {bar}: {why}"
    if source == "paper" and uncalibrated == "inconclusive":
        reason = (
            f"the key has no calibrated null (it was embedded without reference models) and none was "
            f"given, so it cannot decide; under the paper's Binomial({n}, 1/2) null, which claims "
            f"independently trained models, it would be {status.value} (p={pv:.3g}: {reason}). Calibrate "
            f"(--calibrate MODEL, or re-embed with references) or accept that null with --paper-null"
        )
        status = Ownership.INCONCLUSIVE
    answered = errors + correct
    return OwnershipVerdict(
        status=status,
        reason=reason,
        alpha=alpha,
        theta=theta,
        errors=errors,
        correct=correct,
        p_value=pv,
        key_accuracy=correct / answered if answered else None,
        sequential=sequential,
        null=null.to_dict(),
        null_source=source,
        null_tested=rule.tested.to_dict(),
        theta_null=rule.theta_null,
        theta_margin=rule.theta_margin,
        margin=rule.margin,
        reference_max=rule.reference_max,
        claim_accuracy=rule.claim_accuracy,
        **evidence(key, answers),
    )
