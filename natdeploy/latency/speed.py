"""Machine-speed normalisation: the anchor subnet, the speed model that brings a measurement to a table's nominal
machine speed, and the cross-validated fit of that model's elasticity.

Why it exists. Shared cloud VMs, like the 2-core machines this project is built on, change speed by up to 2x within
a second and by tens of percent over minutes (thread CPU time slows as much as wall time, so it is not steal). A
latency measured at one moment is therefore not comparable with one measured at another. The local CPU specs
(``devices/cpu*.yaml``) deal with this in three steps:

1. **Spread in time.** ``rounds`` and ``min_span_s`` time a batch of models round-robin in many rounds spread over
   seconds (:func:`natdeploy.latency.measure.time_interleaved`), so that every model sees the same mix of fast and
   slow moments and its low percentile repeats.
2. **Time an anchor beside it.** With ``anchor: true`` a fixed mid-sized subnet, :data:`ANCHOR_ARCH`, is timed at the
   start of every round, again every ~20 ms and at the end of the round. :data:`ANCHOR_SESSIONS` sessions of it take
   turns, because fresh sessions of one model differ by a few percent and a single session's offset would shift
   every ratio taken in that process. Each model's fastest run in a round is divided by the mean of the anchor's
   fastest runs in the visits just before and after it; the median over the rounds is the measurement's
   ``anchor_ratio``, and the anchor's own p10 over the batch is its ``anchor_ms``. Speed changes that last longer
   than a few milliseconds cancel in the ratio. Whole subnets (``e2e_repeats``) are timed in several such batches,
   each with fresh sessions and in another order, and keep the median (:meth:`Measurement.combine`).
3. **Model the rest.** A table's values are its ratios times its *nominal* anchor latency, the median ``anchor_ms``
   over all its measurements (:func:`nominal_anchor_ms`): the machine speed the table describes. The ratios
   themselves still shift with the machine's speed: when the whole machine runs slower, models smaller than the
   anchor slow down more than it and larger ones less, so the ratios crowd towards 1 (and spread when it runs
   faster). With ``s = log(anchor_ms / nominal)``, the ratio at nominal speed is taken as
   ``log r0 = log r / (1 + elasticity * s)``, with that divisor kept within [0.5, 2] (:meth:`SpeedModel.normalise`).

The elasticity is fitted on a table's own whole-subnet measurements by cross-validating the whole predictor
(:func:`fit`; ``speed_elasticity: auto`` in a spec, run at the end of ``natdeploy profile`` and by ``natdeploy
tables refit``), or fixed by the spec (a number; 0 takes the ratios as speed-independent). The ``cpu`` spec fits
it; ``cpu-litert`` keeps 0, because there the fitted value did not carry over to subnets measured in another
process. The exporter brings the exported file's measured latency to the table's speed with the same
:class:`SpeedModel` as the predictor, and reports both numbers.

On a quiet, dedicated machine none of this is needed: ``rounds: 1`` and ``anchor: false`` time each model back to
back. ``benchmarks/latency_noise.py`` measures how much a machine's ratios move from one batch to the next.

Measured and modelled are kept apart: a :class:`~natdeploy.latency.measure.Measurement` holds what was timed (its
statistics, ``anchor_ms`` and ``anchor_ratio``); a :class:`SpeedModel` turns it into a latency at nominal speed.
A table stores the raw measurements and the fitted elasticity; its nominal anchor latency is a statistic of those
measurements, so it is computed from them, never stored beside them. The measured effect of each step is in
``benchmarks/RESULTS.md`` (``latency_noise``, ``latency_predictor``).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Sequence

import numpy as np

from natdeploy.latency.measure import Measurement

# The anchor workload timed in every interleaved batch where the spec asks (``anchor: true``): a mid-sized subnet.
ANCHOR_ARCH = "w1.0-r48-545454-545454-545454-545454-545454"
# Sessions of the anchor that take turns within a batch (see the module docstring, step 2).
ANCHOR_SESSIONS = 8

# Candidate elasticities, and what a table's whole-subnet measurements must offer to fit one: enough subnets,
# measured at machine speeds that differ by enough to tell elasticities apart. None is positive: where
# cross-validation chose a positive value it did not carry over to subnets measured in another process
# (benchmarks/RESULTS.md, latency_predictor).
ELASTICITY_GRID = tuple(round(c, 2) for c in np.arange(-1.2, 0.01, 0.1))
MIN_E2E_FOR_ELASTICITY = 50
MIN_SPEED_SPREAD = 0.1  # log(p90 / p10) of the batches' anchor latencies
DIVISOR_RANGE = (0.5, 2.0)  # the elasticity's divisor is kept in here, so that no ratio is inverted or exploded


def nominal_anchor_ms(measurements: Iterable[Measurement]) -> float | None:
    """The median anchor latency of the measurements that carry one (None when none does): the machine speed
    that a table of them describes."""
    values = [m.anchor_ms for m in measurements if m.anchor_ms]
    return (statistics.median(values) if values else 0.0) or None


def implied_anchor_ms(m: Measurement, statistic: str) -> float | None:
    """The anchor latency that makes ``m``'s statistic over it equal its per-round ratio to the anchor (its batch's
    anchor p10 where it has no ratio): what a drift check divides by."""
    return m.value(statistic) / m.anchor_ratio if m.anchor_ratio else m.anchor_ms


@dataclass(frozen=True)
class SpeedModel:
    """How a measurement becomes a latency at a table's nominal machine speed.

    ``nominal_anchor_ms``: the anchor latency at that speed (None: the table has no anchor; values stay as
    measured). ``elasticity``: how anchor ratios change with the machine's speed (0: they do not).
    ``statistic``: which :class:`Measurement` statistic is read where a measurement has no anchor ratio.
    """

    nominal_anchor_ms: float | None
    elasticity: float = 0.0
    statistic: str = "p10"

    @classmethod
    def of(cls, measurements: Iterable[Measurement], elasticity: float = 0.0, statistic: str = "p10") -> "SpeedModel":
        """The model whose nominal speed is the median anchor latency of ``measurements``."""
        return cls(nominal_anchor_ms(measurements), float(elasticity), statistic)

    def anchored(self, m: Measurement) -> bool:
        """Whether ``m`` can be brought to nominal speed (the model has a nominal speed, ``m`` an anchor)."""
        return bool(self.nominal_anchor_ms and m.anchor_ms)

    def normalise(self, m: Measurement) -> float:
        """``m`` in ms at nominal speed: its anchor ratio (corrected by the elasticity) times the nominal anchor
        latency; without a ratio, the statistic scaled by nominal over the anchor of its batch; without an anchor,
        the statistic as measured."""
        nominal = self.nominal_anchor_ms
        if nominal and m.anchor_ratio:
            if self.elasticity and m.anchor_ms:
                divisor = 1.0 + self.elasticity * math.log(m.anchor_ms / nominal)
                lo, hi = DIVISOR_RANGE
                return nominal * math.exp(math.log(m.anchor_ratio) / min(hi, max(lo, divisor)))
            return m.anchor_ratio * nominal
        value = m.value(self.statistic)
        return value * nominal / m.anchor_ms if nominal and m.anchor_ms else value


@dataclass(frozen=True)
class SpeedFit:
    """The outcome of :func:`fit`: the chosen model and the cross-validated score of every candidate elasticity
    (empty when the measurements could not tell elasticities apart and the model keeps elasticity 0)."""

    model: SpeedModel
    scores: dict[float, float] = field(default_factory=dict)


# (candidate model, train indices, held-out indices) -> predicted ms of the held-out measurements, by a predictor
# fitted with the candidate model on the train measurements only.
PredictHeldOut = Callable[[SpeedModel, np.ndarray, np.ndarray], np.ndarray]


def fit(base: SpeedModel, e2e: Sequence[Measurement], predict_held_out: PredictHeldOut, folds: int = 5,
        seed: int = 0, grid: Sequence[float] = ELASTICITY_GRID) -> SpeedFit:
    """The elasticity that best explains the whole-subnet measurements ``e2e``, by ``folds``-fold cross-validation
    of the predictor that ``predict_held_out`` fits; a new model with ``base``'s nominal speed and statistic.

    The score is scale-free: the squared error of log(predicted / measured) on the held-out folds over the variance
    of log(measured) (1 - R^2), because an elasticity also compresses or spreads the values it is scored on. The
    model keeps elasticity 0 when the measurements are too few, lack anchor ratios, or were all taken at nearly one
    machine speed. Nothing passed in is changed."""
    from sklearn.model_selection import KFold

    e2e = list(e2e)
    none = SpeedFit(replace(base, elasticity=0.0))
    anchored = [m for m in e2e if m.anchor_ratio and m.anchor_ms]
    if len(anchored) < MIN_E2E_FOR_ELASTICITY or len(anchored) < len(e2e) or not base.nominal_anchor_ms:
        return none
    speeds = np.log([m.anchor_ms for m in anchored])
    if np.percentile(speeds, 90) - np.percentile(speeds, 10) < MIN_SPEED_SPREAD:
        return none
    splits = list(KFold(n_splits=folds, shuffle=True, random_state=seed).split(np.arange(len(e2e))))
    scores: dict[float, float] = {}
    for c in grid:
        model = replace(base, elasticity=float(c))
        y = np.log([model.normalise(m) for m in e2e])
        pred = np.empty_like(y)
        for train, held in splits:
            pred[held] = np.log(predict_held_out(model, train, held))
        scores[float(c)] = float(((pred - y) ** 2).sum() / ((y - y.mean()) ** 2).sum())
    best = min(scores, key=scores.get)
    return SpeedFit(replace(base, elasticity=best), scores)
