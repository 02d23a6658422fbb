"""The NAT loop (Lu et al., TPAMI 2021): archive -> surrogate -> NSGA-II/III -> subset -> supernet adaptation.

Every iteration ends with a checkpoint (archive, state, supernet); ``resume`` continues a killed run exactly,
because every random stream is derived from (seed, iteration, phase) rather than carried in memory. Inside the
long phases (warm-up, adaptation) the training state is saved every epoch and every ``checkpoint_every_s``.

The same loop runs in one process or in every process of a ``torchrun`` job (:mod:`natdeploy.distributed`):
training shards each global batch, evaluation shards the subnets and gathers their accuracies, the surrogate fit,
NSGA and subset selection run on rank 0 and are broadcast, and only rank 0 writes the run folder. Nothing in the
state depends on the number of processes, so a run resumes with another. With several nodes, the run folder must
be on a filesystem that every node sees.

Widths (NAT's width gene): a run holds one supernet per width of its space (w1.0 and w1.2, say), each trained
and checkpointed on its own. The surrogate and NSGA search genomes of every width; an Arch is evaluated (BN
recalibration included) on the supernet of its width; the warm-up trains each supernet with the sandwich rule at its
width; each iteration's adaptation trains each supernet on subnets sampled from the best archive members of its own
width (the top ``top_archs`` of that width, ranked as NAT ranks the whole archive), one width after the other, on
the same seeded data order. A single-width run is exactly what it was before widths were added.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from natdeploy.data import ImageData
from natdeploy.distributed import LOCAL, Runtime, barrier, broadcast_object, check_same_config
from natdeploy.errors import NatDeployError
from natdeploy.latency.predictor import LatencyPredictor
from natdeploy.run_folder import STATE_VERSION, ArchiveEntry, RunFolder, RunFolderError, SearchState
from natdeploy.search.problem import CostCache, NATProblem, canonical, evaluate_columns, objective_columns, repair_genomes
from natdeploy.space import GENOME_LENGTH, SearchSpace
from natdeploy.supernet import OFAMobileNetV3Supernet
from natdeploy.supernet.checkpoint import TRAIN_STATE_FORMAT, cpu_copy
from natdeploy.train import evaluate_archs, train_epochs

log = logging.getLogger(__name__)
__all__ = ["NATConfig", "NATSearch", "SearchError", "ArchiveEntry", "SearchState", "STATE_VERSION",
           "supernets_by_width"]


class SearchError(NatDeployError):
    """The search cannot start or continue as asked."""


@dataclass
class NATConfig:
    """NAT's settings; the defaults are the paper's reference values (``quick()`` gives a demo-sized run)."""

    iterations: int = 30
    initial_archs: int = 100
    population: int = 100
    generations: int = 20
    candidates_per_iter: int = 8
    top_archs: int = 150
    subnets_per_step: int = 4
    epochs_per_iter: int = 5
    warmup_epochs: int = 10
    surrogate: str = "rbf"
    objectives: tuple[str, ...] = ("error", "latency")
    lr: float = 0.05
    weight_decay: float = 3e-5
    # subnets other than the largest learn from alpha * KD(largest) + (1 - alpha) * CE(labels); 0.5 is OFA's CE + KD
    # (halved). Pure KD (1.0) caps them at a teacher that is itself still learning the new task.
    kd_alpha: float = 0.5
    batch_size: int = 64
    bn_batches: int = 4
    val_limit: int | None = None
    reevaluate_archive: bool = True
    seed: int = 0

    @classmethod
    def quick(cls, **overrides: Any) -> "NATConfig":
        """A demo-sized run that finishes in minutes on 2 CPU cores."""
        base = dict(iterations=2, initial_archs=16, population=40, generations=10, candidates_per_iter=6,
                    top_archs=20, subnets_per_step=2, epochs_per_iter=1, warmup_epochs=2, batch_size=64)
        base.update(overrides)
        return cls(**base)

    @classmethod
    def preset(cls, settings: str = "paper", pretrained: bool = False, **overrides: Any) -> "NATConfig":
        """``paper`` (NAT's reference values) or ``quick`` settings, with the learning recipe of where the supernet
        starts: from scratch, a sandwich-rule warm-up at lr 0.05 and weight decay 3e-5; from a pre-trained
        checkpoint, NAT's published adaptation recipe (:data:`PRETRAINED_RECIPE`: lr 2.5e-3, weight decay 3e-4,
        4 subnets per step distilled from the largest, no warm-up)."""
        if settings not in ("paper", "quick"):
            raise SearchError(f"unknown settings {settings!r}; use paper or quick")
        base = {**(PRETRAINED_RECIPE if pretrained else {}), **overrides}
        return cls.quick(**base) if settings == "quick" else cls(**base)

    def to_record(self) -> dict[str, Any]:
        """The settings as a run's state.json records them (JSON types only)."""
        return {**asdict(self), "objectives": list(self.objectives)}

    @classmethod
    def from_record(cls, record: Mapping[str, Any], where: str = "the recorded settings") -> "NATConfig":
        """Settings read back from a run's state; keys it lacks take the defaults above, unknown keys are refused."""
        unknown = sorted(set(record) - {f.name for f in fields(cls)})
        if unknown:
            raise SearchError(f"{where}: unknown search setting(s) {unknown}; the state was written by another "
                              "natdeploy version or edited by hand")
        values = dict(record)
        if "objectives" in values:
            values["objectives"] = tuple(values["objectives"])
        return cls(**values)


# NAT's adaptation of a pre-trained supernet (moea-nas-framework's settings): a small learning rate and OFA's weight
# decay keep what the supernet learned on ImageNet; the subnets learn from the largest one's outputs (kd_alpha).
PRETRAINED_RECIPE: dict[str, Any] = {"lr": 2.5e-3, "weight_decay": 3e-4, "subnets_per_step": 4, "warmup_epochs": 0}


def _rng(seed: int, iteration: int, phase: int) -> np.random.Generator:
    return np.random.default_rng([seed, iteration + 1, phase])


class NATSearch:
    """One NAT run in ``run_dir``. Build it with :meth:`create` or :meth:`resume`, then call :meth:`run`."""

    def __init__(self, run_dir: Path, state: SearchState,
                 supernet: OFAMobileNetV3Supernet | Mapping[float, OFAMobileNetV3Supernet] | None, data: ImageData,
                 predictors: dict[str, LatencyPredictor], archive: list[ArchiveEntry],
                 runtime: Runtime | None = None, checkpoint_every_s: float | None = 600.0) -> None:
        self.rt = runtime or LOCAL
        self.run_dir, self.state = run_dir, state
        nets = supernets_by_width(supernet) if supernet is not None else {}
        self.supernets: dict[float, OFAMobileNetV3Supernet] = {w: n.to(self.rt.device) for w, n in nets.items()}
        # in-memory images go to the accelerator once, so batches are cut and augmented there
        self.data = data.to(self.rt.device) if data is not None and self.rt.device.type != "cpu" else data
        self.predictors, self.archive = predictors, archive
        self.checkpoint_every_s = checkpoint_every_s
        self.folder = RunFolder(run_dir) if run_dir is not None else None
        self.cfg = NATConfig.from_record(state.config)
        self.space = SearchSpace(resolutions=tuple(state.space["resolutions"]), widths=tuple(state.space["widths"]),
                                 name=state.space.get("name", "custom"))
        self.costs = CostCache(self.space, state.n_classes)
        self.columns = objective_columns(self.cfg.objectives, state.devices)

    @property
    def supernet(self) -> OFAMobileNetV3Supernet | None:
        """The supernet of the run's first width (its only one in a single-width run)."""
        return self.supernets[min(self.supernets)] if self.supernets else None

    @property
    def widths(self) -> list[float]:
        return sorted(self.supernets)

    # ----- construction -------------------------------------------------------------------------------------
    @classmethod
    def create(cls, run_dir: Path, config: NATConfig, space: SearchSpace, data: ImageData,
               predictors: dict[str, LatencyPredictor], budgets: dict[str, float],
               supernet: OFAMobileNetV3Supernet | Sequence[OFAMobileNetV3Supernet],
               supernet_source: str | Sequence[str] = "scratch", runtime: Runtime | None = None,
               checkpoint_every_s: float | None = 600.0) -> "NATSearch":
        """A new run in ``run_dir`` over the widths of ``supernet`` (one supernet, or one per width; the space is
        narrowed to their widths). ``supernet_source``: ``scratch``, or where each supernet came from, in the
        order of the supernets given."""
        if RunFolder(run_dir).has_state():
            raise SearchError(f"{run_dir} already holds a search; pass --resume to continue it or --out elsewhere")
        barrier(runtime)  # every rank has looked before rank 0 writes
        given = [supernet] if isinstance(supernet, OFAMobileNetV3Supernet) else list(supernet)
        nets = supernets_by_width(given)
        outside = [w for w in nets if w not in space.widths]
        if outside:
            raise SearchError(f"the supernet's width {outside[0]} is not in the search space {space.widths}")
        space = SearchSpace(resolutions=space.resolutions, widths=tuple(nets), name=space.name)
        sources = [supernet_source] if isinstance(supernet_source, str) else [str(v) for v in supernet_source]
        if len(sources) not in (1, len(given)):
            raise SearchError(f"{len(sources)} supernet sources for {len(given)} supernets")
        if len(sources) > 1:  # recorded in the order of the widths
            sources = [src for _, src in sorted(zip([n.width for n in given], sources))]
        state = SearchState(config=config.to_record(),
                            devices=list(predictors), budgets=budgets,
                            space={"name": space.name, "resolutions": list(space.resolutions),
                                   "widths": list(space.widths)},
                            data=data.describe(), n_classes=data.n_classes,
                            supernet_source=sources[0] if len(sources) == 1 else sources)
        _check_ranks_agree(state, runtime)
        search = cls(run_dir, state, supernet, data, predictors, [], runtime, checkpoint_every_s)
        search._checkpoint()
        return search

    @classmethod
    def resume(cls, run_dir: Path, data: ImageData, predictors: dict[str, LatencyPredictor],
               iterations: int | None = None, runtime: Runtime | None = None,
               checkpoint_every_s: float | None = 600.0) -> "NATSearch":
        """Continue the run in ``run_dir`` (optionally extended to ``iterations``)."""
        folder = RunFolder(run_dir)
        if not folder.has_state():
            raise SearchError(f"{run_dir} holds no search to resume (no {folder.STATE})")
        try:
            state = folder.read_state()
            NATConfig.from_record(state.config, str(folder.state_path))
        except RunFolderError as exc:
            raise SearchError(str(exc)) from None
        if iterations is not None:
            state.config["iterations"] = iterations
        if sorted(state.devices) != sorted(predictors):
            raise SearchError(f"{run_dir} searched devices {state.devices}; resume it with the same --device flags")
        if data.describe()["n_train"] != state.data["n_train"] or data.classes != state.data["classes"]:
            raise SearchError(f"{run_dir} was searched on {state.data['source']}; resume it with the same data")
        try:
            supernets = folder.load_supernets(state)
        except RunFolderError as exc:
            raise SearchError(str(exc)) from None
        _check_ranks_agree(state, runtime)
        return cls(run_dir, state, supernets, data, predictors, list(state.archive), runtime, checkpoint_every_s)

    # ----- the loop -----------------------------------------------------------------------------------------
    def run(self, on_event: Callable[[str, dict], None] | None = None) -> list[ArchiveEntry]:
        """Run (or continue) the search to ``config.iterations``; checkpoints after every phase. A supernet
        from scratch is first warmed up with the sandwich rule."""
        emit = on_event or (lambda kind, info: None)
        cfg = self.cfg
        emit("plan", self._plan())
        if self.state.completed_iteration < 0:
            if self.state.supernet_source == "scratch" and cfg.warmup_epochs > 0 and not self.state.warmed_up:
                emit("phase", {"name": f"warm-up: {cfg.warmup_epochs} sandwich-rule epochs from scratch"})
                t0 = time.perf_counter()
                self._train_each("warmup", emit, lambda w: (lambda rng, n: self.space.at_width(w).sample(rng, n)),
                                 epochs=cfg.warmup_epochs, seed=cfg.seed, include_smallest=True)
                self.state.timings.append({"phase": "warmup", "seconds": round(time.perf_counter() - t0, 1)})
                self.state.warmed_up = True
                self._checkpoint()
            emit("phase", {"name": f"initial archive: {cfg.initial_archs} subnets"})
            rng = _rng(cfg.seed, -1, 0)
            ends = [a for w in self.widths for a in (self.space.smallest(w), self.space.largest(w))]
            archs = ends + self.space.sample(rng, max(0, cfg.initial_archs - len(ends)))
            genomes = np.unique(canonical(np.stack([self.space.encode(a) for a in archs])), axis=0)
            self._evaluate_new(genomes, iteration=0, predicted=None, emit=emit)
            self.state.completed_iteration = 0
            self._checkpoint()
            self._log_iteration(0)
        while self.state.completed_iteration < cfg.iterations:
            it = self.state.completed_iteration + 1
            self._iteration(it, emit)
            self.state.completed_iteration = it
            self._checkpoint()
            self._log_iteration(it)
            emit("iteration", {"iteration": it, "archive": len(self.archive), **self.state.tau_history[-1]})
        return self.archive

    def _plan(self) -> dict[str, int]:
        """The run's work, all and done (:func:`natdeploy.progress.run_plan`), for the ETA and the estimate."""
        from natdeploy.progress import run_plan

        st = self.state
        return run_plan(self.cfg, len(self.data.train_y), len(self.data.val_y), st.supernet_source == "scratch",
                        st.warmed_up, st.completed_iteration, supernets=len(self.supernets))

    def _iteration(self, it: int, emit: Callable[[str, dict], None]) -> None:
        from natdeploy.search.surrogates import AdaptiveSwitching, cross_validated_tau, kendall_tau, make_surrogate

        cfg = self.cfg
        t0 = time.perf_counter()
        plan = None
        if self.rt.is_main:  # the search's decisions are made once and broadcast, so every rank follows the same
            X = np.array([e.genome for e in self.archive], dtype=float)
            y = np.array([1.0 - e.accuracy for e in self.archive])
            surrogate = make_surrogate(cfg.surrogate, seed=cfg.seed + it).fit(X, y)
            t_fit = time.perf_counter() - t0
            candidates = self._nsga(surrogate, it)
            chosen = self._select_subset(candidates, surrogate, cfg.candidates_per_iter)
            t_search = time.perf_counter() - t0
            predicted = 1.0 - surrogate.predict(chosen.astype(float)) if len(chosen) else np.zeros(0)
            # The same question over the whole archive: 5-fold cross-validation, each member ranked by a surrogate
            # that did not see it (adaptive switching has just computed it for its pick). The new candidates sit
            # close together on the front, so their tau is the harder and noisier of the two.
            cv_tau = (surrogate.scores[surrogate.chosen] if isinstance(surrogate, AdaptiveSwitching) else
                      cross_validated_tau(lambda: make_surrogate(cfg.surrogate, seed=cfg.seed + it), X, y, 5,
                                          cfg.seed))
            plan = (chosen, predicted, float(cv_tau), getattr(surrogate, "chosen", cfg.surrogate), t_fit, t_search)
        chosen, predicted, cv_tau, surrogate_name, t_fit, t_search = broadcast_object(plan, self.rt)
        emit("phase", {"name": f"iteration {it}: evaluating {len(chosen)} candidates"})
        new = self._evaluate_new(chosen, it, predicted, emit)
        tau = kendall_tau(np.array([e.accuracy for e in new]), predicted) if len(new) >= 2 else float("nan")
        what = "the supernet" if len(self.supernets) == 1 else f"the {len(self.supernets)} supernets"
        emit("phase", {"name": f"iteration {it}: adapting {what} ({cfg.epochs_per_iter} epochs)"})
        t1 = time.perf_counter()
        # one cosine schedule over all iterations' adaptation; restarting it at cfg.lr every iteration, the archive's
        # top-1 fell from 33-34% to 30-32% over 3 one-epoch iterations (benchmarks/nat_cifar10.py, 2026-11-30)
        self._train_each(f"adapt-{it}", emit, lambda w: self._adaptation_sampler(it, w), epochs=cfg.epochs_per_iter,
                         seed=cfg.seed * 1000 + it,
                         schedule=((it - 1) * cfg.epochs_per_iter, cfg.iterations * cfg.epochs_per_iter))
        t_train = time.perf_counter() - t1
        if cfg.reevaluate_archive:
            emit("phase", {"name": f"iteration {it}: re-evaluating the archive ({len(self.archive)} subnets)"})
            accs = self._accuracies([self.space.decode(e.genome) for e in self.archive], emit, "reevaluated")
            for entry, acc in zip(self.archive, accs):
                entry.accuracy = acc
        self.state.tau_history.append({"iteration": it, "kendall_tau_unseen": round(float(tau), 4),
                                       "kendall_tau_cv": round(float(cv_tau), 4), "surrogate": surrogate_name})
        self.state.timings.append({"iteration": it, "surrogate_fit_s": round(t_fit, 3),
                                   "search_overhead_s": round(t_search, 3), "train_s": round(t_train, 1),
                                   "total_s": round(time.perf_counter() - t0, 1)})

    def _nsga(self, surrogate: Any, it: int) -> np.ndarray:
        """Candidates from NSGA on the surrogate (pymoo, through the engine's shared core), seeded with the archive:
        the final population's feasible genomes that are not in the archive yet."""
        from natdeploy.search.engine import pymoo_population

        cfg = self.cfg
        seed = int(_rng(cfg.seed, it, 1).integers(2**31 - 1))
        problem = NATProblem(self.space, surrogate, self.cfg.objectives, self.predictors, self.state.budgets,
                             self.costs)
        # Start from the archive's genomes (NAT seeds the search with what it has evaluated), then random ones.
        rng = _rng(cfg.seed, it, 2)
        start = (canonical(np.array([e.genome for e in self.archive])) if self.archive
                 else np.zeros((0, GENOME_LENGTH), dtype=np.int64))
        extra = max(0, cfg.population - len(start))
        if extra:
            rand = np.stack([self.space.encode(a) for a in self.space.sample(rng, extra)])
            start = np.concatenate([start, rand])
        start = start[rng.permutation(len(start))[:cfg.population]] if len(start) > cfg.population else start
        X, cv = pymoo_population(problem, self.space, start, cfg.population, cfg.generations, seed)
        X = X[cv <= 0]
        seen = {tuple(e.genome) for e in self.archive}
        keep = [i for i, row in enumerate(X) if tuple(int(v) for v in row) not in seen]
        return np.unique(X[keep], axis=0) if keep else np.zeros((0, X.shape[1]), dtype=np.int64)

    def _select_subset(self, X: np.ndarray, surrogate: Any, k: int) -> np.ndarray:
        """K candidates spread along the front: non-dominated first, then one per equal-width bin of the first
        cost objective, each bin's best predicted accuracy."""
        from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

        if len(X) <= k:
            return X
        values = evaluate_columns(X, self.columns, surrogate, self.predictors, self.space, self.costs)
        F = np.column_stack([values[c] for c in self.columns])
        fronts = NonDominatedSorting().do(F)
        pool: list[int] = []
        for front in fronts:
            pool += list(front)
            if len(pool) >= k:
                break
        pool_arr = np.array(pool)
        cost_col = next((i for i, c in enumerate(self.columns) if c != "error"), 0)
        cost = F[pool_arr, cost_col]
        err = F[pool_arr, self.columns.index("error")] if "error" in self.columns else cost
        edges = np.linspace(cost.min(), cost.max() + 1e-12, k + 1)
        chosen: list[int] = []
        for lo, hi in zip(edges[:-1], edges[1:]):
            in_bin = np.nonzero((cost >= lo) & (cost < hi))[0]
            if len(in_bin):
                chosen.append(int(in_bin[np.argmin(err[in_bin])]))
        rest = [i for i in np.argsort(err) if i not in chosen]
        chosen += rest[:k - len(chosen)]
        return X[pool_arr[chosen[:k]]]

    def _adaptation_sampler(self, it: int, width: float | None = None) -> Callable[[np.random.Generator, int], list]:
        """Per-gene categorical distributions fitted on the archive's best, for sampling training subnets; with
        ``width``, on the best archive members of that width, and the subnets drawn are of that width."""
        from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

        cfg = self.cfg
        wi = self.space.widths.index(width) if width is not None else None
        entries = [e for e in self.archive if wi is None or e.genome[1] == wi] or list(self.archive)
        F = np.column_stack([[1 - e.accuracy for e in entries],
                             [e.latency_ms[self.state.devices[0]] if self.state.devices else e.madds
                              for e in entries]])
        ranks = np.empty(len(F), dtype=int)
        for r, front in enumerate(NonDominatedSorting().do(F)):
            ranks[front] = r
        order = np.lexsort((F[:, 0], ranks))[:cfg.top_archs]
        G = np.array([entries[i].genome for i in order])
        lo, hi = self.space.lower_bounds, self.space.upper_bounds
        probs = []
        for j in range(G.shape[1]):
            counts = np.bincount(G[:, j] - lo[j], minlength=hi[j] - lo[j] + 1).astype(float) + 1.0
            probs.append(counts / counts.sum())

        def sample(rng: np.random.Generator, n: int) -> list:
            raw = np.array([[lo[j] + rng.choice(len(p), p=p) for j, p in enumerate(probs)] for _ in range(n)])
            if wi is not None:
                raw[:, 1] = wi
            return [self.space.decode(g) for g in repair_genomes(self.space, raw, rng)]

        return sample

    # ----- evaluation and bookkeeping -----------------------------------------------------------------------
    def _accuracies(self, archs: list, emit: Callable[[str, dict], None], kind: str = "evaluated") -> list[float]:
        """Each Arch's accuracy on the supernet of its width (the widths one after the other), in ``archs``' order."""
        # Every subnet's BN statistics are recalibrated on the same training images (OFA does the same): with
        # other images per subnet, their accuracies would differ by BN-sampling noise too (measured: up to 0.4
        # points SD with 4 batches of 256), which the surrogates would then have to learn as signal.
        unknown = sorted({a.w for a in archs} - set(self.supernets))
        if unknown:
            raise SearchError(f"no supernet of width {unknown[0]} in this run (widths {self.widths})")
        accuracies = [0.0] * len(archs)
        done = 0
        for width in self.widths:
            idx = [i for i, a in enumerate(archs) if a.w == width]
            if not idx:
                continue
            accs = evaluate_archs(self.supernets[width], [archs[i] for i in idx], self.data, self.cfg.bn_batches,
                                  seed=self.cfg.seed, val_limit=self.cfg.val_limit, runtime=self.rt,
                                  progress=lambda d, t, o=done: emit(kind, {"done": o + d, "total": len(archs)}))
            for i, acc in zip(idx, accs):
                accuracies[i] = acc
            done += len(idx)
        return accuracies

    def _evaluate_new(self, genomes: np.ndarray, iteration: int, predicted: np.ndarray | None,
                      emit: Callable[[str, dict], None]) -> list[ArchiveEntry]:
        archs = [self.space.decode(g) for g in genomes]
        accuracies = self._accuracies(archs, emit)
        new = []
        for i, (g, arch, acc) in enumerate(zip(genomes, archs, accuracies)):
            g2 = canonical(g[None])
            lat = {d: float(p.predict_genomes(self.space, g2, self.state.n_classes)[0])
                   for d, p in self.predictors.items()}
            m, p = self.costs(g2)
            entry = ArchiveEntry([int(v) for v in g2[0]], str(arch), acc, lat, int(m[0]), int(p[0]), iteration,
                                 None if predicted is None else round(float(predicted[i]), 5))
            new.append(entry)
            self.archive.append(entry)
        return new

    def _train_each(self, tag: str, emit: Callable[[str, dict], None],
                    sampler_of: Callable[[float], Callable[[np.random.Generator, int], list]], epochs: int,
                    seed: int, include_smallest: bool = False, schedule: tuple[int, int] | None = None) -> None:
        """The long phase ``tag`` (warm-up or one iteration's adaptation): train each width's supernet in turn,
        with subnets from ``sampler_of(width)``. With several widths, each width's finished training is kept in
        its phase file, so that a kill during a later width does not redo it."""
        cfg, multi = self.cfg, len(self.supernets) > 1
        for width in self.widths:
            net = self.supernets[width]
            part = {"width": width} if multi else {}
            if multi:
                finished = self.folder.read_phase(tag, width)
                if finished is not None and finished.get("finished"):
                    net.load_state_dict(finished["model"])
                    emit("phase", {"name": f"{tag}: w{width} already trained (from its checkpoint)"})
                    continue
                emit("phase", {"name": f"{tag}: the w{width} supernet"})
            train_epochs(net, self.data, self.space.at_width(width), epochs, sampler_of(width), cfg.subnets_per_step,
                         seed=seed, lr=cfg.lr, batch_size=cfg.batch_size, kd_alpha=cfg.kd_alpha,
                         include_smallest=include_smallest, schedule=schedule, **self._phase_args(tag, emit, **part))
            if multi:
                if self.rt.is_main:
                    self.folder.write_phase(tag, {"format": TRAIN_STATE_FORMAT, "finished": True,
                                                  "model": cpu_copy(net.state_dict())}, width)
                barrier(self.rt)

    def _phase_args(self, tag: str, emit: Callable[[str, dict], None], width: float | None = None) -> dict[str, Any]:
        """train_epochs' arguments for the long phase ``tag`` (of ``width``'s supernet, with several widths): this
        run's runtime and weight decay, progress and metrics, and the in-phase checkpoints (saved by rank 0; a
        resumed run continues from the phase's own)."""
        where = {} if width is None else {"width": width}

        def on_step(info: dict) -> None:
            emit("step", info)
            if self.rt.is_main:
                self.folder.append_metrics({"kind": "step", "phase": tag, **where, **info,
                                            "images_per_s": round(info["images"] / max(info["seconds"], 1e-9), 2)})

        resume_from = self.folder.read_phase(tag, width)
        if resume_from is not None:
            emit("note", {"text": f"{tag}: continuing from its checkpoint at step {resume_from['step']}"})
        return {"runtime": self.rt, "weight_decay": self.cfg.weight_decay, "on_step": on_step,
                "on_checkpoint": lambda state: self.folder.write_phase(tag, state, width),
                "checkpoint_every_s": self.checkpoint_every_s, "resume_from": resume_from}

    def _log_iteration(self, it: int) -> None:
        """Per-iteration archive statistics in metrics.jsonl: best accuracy within the budgets, hypervolume, tau."""
        if not self.rt.is_main:
            return
        from natdeploy.run_folder import best_within
        from natdeploy.search.html_report import hypervolume_history

        best = best_within(self.archive, self.state.budgets)
        self.folder.append_metrics({
            "kind": "iteration", "iteration": it, "archive": len(self.archive),
            "best_accuracy_within_budget": None if best is None else best.accuracy,
            "best_accuracy": max(e.accuracy for e in self.archive),
            "hypervolume": {d: dict(hypervolume_history(self.archive, d)).get(it) for d in self.state.devices},
            **({k: v for k, v in self.state.tau_history[-1].items() if k != "iteration"} if it > 0 else {})})

    def _checkpoint(self) -> None:
        """Commit the state, archive and supernet through the run folder (supernet first, state.json last); only
        rank 0 writes, the others wait for it."""
        if self.rt.is_main:
            self.folder.write_checkpoint(self.state, self.archive, self.supernets)
            self.folder.clear_phase()
        barrier(self.rt)


def supernets_by_width(supernets: OFAMobileNetV3Supernet | Sequence[OFAMobileNetV3Supernet]
                       | Mapping[float, OFAMobileNetV3Supernet]) -> dict[float, OFAMobileNetV3Supernet]:
    """One supernet, several, or a mapping by width, as ``{width: supernet}`` in width order; two of one width, or
    a mapping key that is not its supernet's width, are refused."""
    if isinstance(supernets, OFAMobileNetV3Supernet):
        supernets = [supernets]
    if isinstance(supernets, Mapping):
        wrong = [(w, n.width) for w, n in supernets.items() if float(w) != n.width]
        if wrong:
            raise SearchError(f"the supernet given for width {wrong[0][0]} is w{wrong[0][1]}")
        supernets = list(supernets.values())
    nets: dict[float, OFAMobileNetV3Supernet] = {}
    for net in supernets:
        if net.width in nets:
            raise SearchError(f"two supernets of width {net.width}; give one supernet per width")
        nets[net.width] = net
    if not nets:
        raise SearchError("a search needs at least one supernet")
    return dict(sorted(nets.items()))


def _check_ranks_agree(state: SearchState, runtime: Runtime | None) -> None:
    """Ranks started with other arguments or data fail here at once, naming the ranks, instead of hanging later."""
    check_same_config({"config": state.config, "devices": state.devices, "budgets": state.budgets,
                       "space": state.space, "data": {k: v for k, v in state.data.items() if k != "source"},
                       "n_classes": state.n_classes, "completed_iteration": state.completed_iteration},
                      runtime, what="search configuration and data")
