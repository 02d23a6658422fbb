"""A search's progress on stderr: a line per phase (and one when it ends), a bar per phase, a whole-run training
ETA, and, once, an estimate of the whole run's time on this machine with the way to shorten it.

:func:`run_plan` counts the work of a run (training steps, subnet evaluations); the NAT loop emits it as its
``plan`` event, and the CLI computes it for the shorter settings it suggests.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any, Optional

from natdeploy import settings

ESTIMATE_AFTER_STEPS = 4  # the estimate is printed after this many training steps (or when a phase ends sooner)
FORWARD_BACKWARD = 3.0  # a training forward and backward pass costs about three forward passes
BN_BATCH = 256  # the batch size of BN recalibration and evaluation (natdeploy.train.evaluate_archs' default)


def evaluations(cfg: Any, iterations: int) -> int:
    """Subnet evaluations of the first ``iterations`` iterations: the initial archive, then each iteration's
    candidates and, with ``reevaluate_archive``, the whole archive again (at most, as NSGA may find fewer)."""
    total = cfg.initial_archs
    for it in range(1, iterations + 1):
        total += cfg.candidates_per_iter
        if cfg.reevaluate_archive:
            total += cfg.initial_archs + it * cfg.candidates_per_iter
    return total


def run_plan(cfg: Any, n_train: int, n_val: int, scratch: bool, warmed_up: bool = False,
             completed_iteration: int = -1, supernets: int = 1) -> dict[str, int]:
    """The work of a run with settings ``cfg`` (a NATConfig) on ``n_train`` / ``n_val`` images: training steps and
    subnet evaluations in all and already done, and the images one step and one evaluation pass forward. Each of
    ``supernets`` (one per width) trains on every batch."""
    per_epoch = -(-n_train // cfg.batch_size) * max(1, supernets)
    warmup = cfg.warmup_epochs * per_epoch if scratch else 0
    adapt = cfg.epochs_per_iter * per_epoch
    done_its = max(0, completed_iteration)
    started = completed_iteration >= 0
    n_eval_val = min(n_val, cfg.val_limit) if cfg.val_limit else n_val
    return {"steps_total": warmup + adapt * cfg.iterations,
            "steps_done": (warmup if warmed_up or started else 0) + adapt * done_its,
            "evals_total": evaluations(cfg, cfg.iterations),
            "evals_done": evaluations(cfg, done_its) if started else 0,
            "step_images": cfg.batch_size * (cfg.subnets_per_step + 1),
            "eval_images": min(n_train, cfg.bn_batches * BN_BATCH) + n_eval_val,
            "iterations": cfg.iterations}


def estimate_seconds(plan: dict[str, int], image_s: float, eval_s: Optional[float] = None) -> float:
    """The whole run's seconds: its steps at ``image_s`` per image and subnet trained (so that settings with
    other batches or subnets per step are costed too) and its evaluations at ``eval_s`` each; without a measured
    ``eval_s``, an evaluation is costed by its forward passes from ``image_s``."""
    if eval_s is None:
        eval_s = image_s / FORWARD_BACKWARD * plan.get("eval_images", 0)
    return plan["steps_total"] * image_s * plan.get("step_images", 1) + plan["evals_total"] * eval_s


def format_duration(seconds: float) -> str:
    """``~40 s``, ``~12 min``, ``~2 h 10 min``."""
    if seconds < 60:
        return f"~{max(1, round(seconds))} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"~{minutes} min"
    return f"~{minutes // 60} h {minutes % 60} min"


def estimate_line(seconds: float, label: str, shorter: Optional[tuple[str, float]] = None) -> str:
    """One line: the estimate for the chosen settings (``label``), and how to shorten the run."""
    how = (f"{shorter[0]} takes {format_duration(shorter[1])}, or lower --iterations" if shorter
           else "lower --iterations or --initial-archs to shorten it")
    return f"estimated total: {format_duration(seconds)} on this machine for {label}; {how}"


class Progress:
    """The search's ``on_event``: prints each phase as it starts and ends; a tqdm bar for training steps and
    evaluations (off when quiet or not a terminal), with the throughput and an ETA over the whole run's remaining
    training steps; and once, after the first steps, :func:`estimate_line`.

    ``label`` names the chosen settings (``--settings paper (30 iterations)``); ``shorter`` is the label and
    :func:`run_plan` of the shorter settings to suggest, if any.
    """

    def __init__(self, quiet: bool, label: str = "these settings",
                 shorter: Optional[tuple[str, dict[str, int]]] = None) -> None:
        self.disable, self.quiet, self.bar, self.kind = settings.progress_disable(quiet), quiet, None, None
        self.label, self.shorter = label, shorter
        self.run_total = self.run_done = self.last_step = 0
        self.step_s: float | None = None  # running mean of seconds per step
        self.plan: dict[str, int] | None = None
        self.step_times: list[float] = []
        self.evals_timed = [0.0, 0]  # seconds and count of the evaluations of finished phases
        self.phase_evals: tuple[float, int] | None = None  # the current phase's so far
        self.estimated = False
        self.phase: tuple[str, float] | None = None  # the current phase's name and start

    def __call__(self, kind: str, info: dict[str, Any]) -> None:
        if kind == "plan":
            self.plan = info
            self.run_total, self.run_done = info["steps_total"], info["steps_done"]
        elif kind == "phase":
            self._end_phase()
            self.phase = (info["name"], time.perf_counter())
            self._say(info["name"])
        elif kind == "iteration":
            self._end_phase()
            self._say(f"iteration {info['iteration']} done: archive {info['archive']}, surrogate Kendall tau on the "
                      f"new candidates {info['kendall_tau_unseen']}, cross-validated on the archive "
                      f"{info.get('kendall_tau_cv')}")
        elif kind == "note":
            self._say(info["text"])
        elif kind in ("step", "evaluated", "reevaluated"):
            self._tick(kind, info)

    def _tick(self, kind: str, info: dict[str, Any]) -> None:
        from tqdm.auto import tqdm

        total, n = info["total"], info.get("step", info.get("done"))
        if self.bar is None or self.kind != kind or self.bar.total != total:
            self.close_bar()
            desc = {"step": "training", "evaluated": "evaluating", "reevaluated": "re-evaluating"}[kind]
            # starting at the first value seen, so a resumed phase shows no absurd first rate
            self.bar = tqdm(total=total, initial=n, desc=desc, unit="step" if kind == "step" else "subnet",
                            leave=False, disable=self.disable)
            self.kind = kind
        if kind == "step":
            self._step(info)
        elif self.phase is not None and n:
            self.phase_evals = (time.perf_counter() - self.phase[1], n)
        if n > self.bar.n:
            self.bar.update(n - self.bar.n)

    def _step(self, info: dict[str, Any]) -> None:
        step = info["step"]
        self.run_done += step - self.last_step if step > self.last_step else step
        self.last_step = step
        s = max(info["seconds"], 1e-9)
        self.step_s = s if self.step_s is None else 0.9 * self.step_s + 0.1 * s
        self.step_times.append(s)
        left = max(0, self.run_total - self.run_done) * self.step_s
        self.bar.set_postfix_str(f"{info['images'] / s:.0f} img/s, training ETA for the run "
                                 f"{int(left // 3600)}:{int(left % 3600 // 60):02d}:{int(left % 60):02d}",
                                 refresh=False)
        if len(self.step_times) >= ESTIMATE_AFTER_STEPS:
            self._estimate()

    def _estimate(self) -> None:
        """Print the run-time estimate once, from the steps seen (the first one, which warms up, left out)."""
        if self.estimated or self.plan is None or not self.step_times:
            return
        self.estimated = True
        times = self.step_times[1:] or self.step_times
        image_s = statistics.median(times) / max(1, self.plan.get("step_images", 1))
        spent, count = self.evals_timed
        if self.phase_evals is not None:
            spent, count = spent + self.phase_evals[0], count + self.phase_evals[1]
        eval_s = spent / count if count else None
        seconds = estimate_seconds(self.plan, image_s, eval_s)
        shorter = None
        if self.shorter is not None:
            shorter = (self.shorter[0], estimate_seconds(self.shorter[1], image_s, eval_s))
        self._say(estimate_line(seconds, self.label, shorter))

    def _end_phase(self) -> None:
        """Close the bar; print the finished phase's one-line record (and the estimate, if its steps were few)."""
        self.close_bar()
        if self.phase_evals is not None:
            self.evals_timed = [self.evals_timed[0] + self.phase_evals[0], self.evals_timed[1] + self.phase_evals[1]]
            self.phase_evals = None
        if self.step_times:
            self._estimate()
        if self.phase is not None:
            self._say(f"{self.phase[0]}: done in {time.perf_counter() - self.phase[1]:.1f} s")
            self.phase = None

    def _say(self, text: str) -> None:
        if not self.quiet:
            if self.bar is not None:
                self.bar.clear()
            print(f"[natdeploy] {text}", file=sys.stderr, flush=True)

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.last_step = 0

    def close(self) -> None:
        """End of this process (finished or interrupted): no bar left on the screen. An interrupted phase gets no
        record: it did not finish."""
        self.close_bar()
