"""One script for the GPU machine: training throughput fp32 against bf16, the data pipeline's rate, and the CUDA
paths end to end, inside about 10 minutes.

The GPU machine has Python 3.12 and torch 2.11 but not natdeploy's pins (no pymoo, xgboost or TensorFlow): the
training sections import only torch and numpy, and the latency-table section gets XGBoost, scikit-learn and SciPy
from wheels that ``gpu_check.sh`` carries. Run it from the source tree:

    bash benchmarks/gpu_check.sh --prepare    # here: the wheels the GPU machine lacks (carry benchmarks/.gpu_wheels)
    bash benchmarks/gpu_check.sh [--out gpu_check.json] [--budget-s 540]   # there
    PYTHONPATH=$PWD python benchmarks/gpu_check.py --dry-run     # tiny, on whatever device is there (CPU here)

Sections, in this order (each skipped when the time budget is spent; what was never measured comes first):
1. the device, and checks: a checkpoint written on the GPU loads on the CPU and back; bf16 support;
2. a ``cuda`` latency table for the ``small`` preset (``profile_device`` on ``devices/cuda.yaml``), written to
   ``$OUT/cuda.json`` with its predictor; XGBoost comes from the wheels ``benchmarks/gpu_check.sh`` carries;
3. where a training step's time goes: one fwd+bwd of the largest subnet through the dynamic supernet against
   its extracted static copy, channels_last against NCHW, fp32 against bf16, cuDNN autotuning at fixed shapes,
   and the top CUDA kernels of the dynamic step at each precision (torch.profiler). The first H200 run
   (2026-12-04) trained at 112 images/s fp32 and 56 bf16, far below what the chip does for a network this size:
   this section says where the time goes;
4. sandwich-step images/s at 224 px (largest + 2 sampled + smallest subnets), fp32 against bf16 (target: >= 1.5x);
5. the in-memory data pipeline's images/s (``ImageData.batches``, with augmentation, at 224 px), against the
   training step's consumption;
6. one NAT iteration at paper settings (NAT's pre-trained adaptation recipe, r 192-256, 5 epochs, ~250 subnet
   evaluations), timed on a CIFAR-10-sized synthetic subset and projected to the full 50k-image iteration;
7. ``train_epochs`` (bf16 on a GPU) and ``evaluate_archs`` end to end on synthetic data: data, device, precision,
   mid-phase checkpoints.

cuDNN autotuning (``cudnn.benchmark``) is off: each sandwich step samples new subnets, so new convolution shapes
keep arriving and every one is tuned afresh; on the H200 it made the fp32 step 1.11 s against 0.68 s without.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from natdeploy.data import ImageData  # noqa: E402
from natdeploy.distributed import Runtime, grad_scaler, init_runtime, precision_context  # noqa: E402
from natdeploy.space import SearchSpace  # noqa: E402
from natdeploy.supernet import OFAMobileNetV3Supernet, load_supernet, save_supernet  # noqa: E402
from natdeploy.train import evaluate_archs, make_optimizer, sandwich_backward, train_epochs  # noqa: E402

FULL = {"resolution": 224, "batch": 128, "warmup": 2, "steps": 5, "n_images": 2048, "storage": 256,
        "data_batch": 256, "e2e_images": 1024, "e2e_archs": 4, "classes": 100,
        "table_device": "cuda", "table_resolutions": None, "table_e2e": 50, "table_overrides": {},
        "breakdown_precisions": ("fp32", "bf16"),
        "paper_resolutions": (192, 208, 224, 240, 256), "paper_train": 1024, "paper_val": 512, "paper_archs": 4}
DRY = {"resolution": 32, "batch": 4, "warmup": 0, "steps": 1, "n_images": 64, "storage": 40,
       "data_batch": 16, "e2e_images": 8, "e2e_archs": 2, "classes": 4,
       "table_device": "cpu-torch", "table_resolutions": (32,), "table_e2e": 4, "breakdown_precisions": ("fp32",),
       "table_overrides": {"warmup": 1, "runs": 3, "e2e_warmup": 1, "e2e_runs": 3, "rounds": 1, "min_span_s": 0},
       "paper_resolutions": (32, 40), "paper_train": 16, "paper_val": 8, "paper_archs": 2}
# What one NAT iteration at paper settings covers on CIFAR-10: 5 adaptation epochs over the 50k training images,
# then the candidates plus the archive re-evaluated (about 250 subnets, issue 15), each after BN recalibration on
# ~960 images and scored on the 10k-image validation split.
CIFAR10_TRAIN, CIFAR10_VAL, EVALS_PER_ITERATION, BN_IMAGES = 50_000, 10_000, 250, 960


class Clock:
    def __init__(self, budget_s: float) -> None:
        self.t0, self.budget_s = time.monotonic(), budget_s

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.t0)


def sync(rt: Runtime) -> None:
    if rt.device.type == "cuda":
        torch.cuda.synchronize(rt.device)


def synthetic_data(n: int, storage: int, classes: int) -> ImageData:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, storage, storage), dtype=torch.uint8, generator=g)
    y = torch.arange(n) % classes
    nv = max(classes, n // 8)
    return ImageData(x, y, x[:nv].clone(), y[:nv].clone(), [str(i) for i in range(classes)], "synthetic")


def device_section(rt: Runtime) -> dict:
    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "device": str(rt.device), "utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    if rt.device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(rt.device)
        info["bf16_supported"] = bool(torch.cuda.is_bf16_supported())
    with tempfile.TemporaryDirectory() as tmp:
        net = OFAMobileNetV3Supernet(n_classes=10).to(rt.device)
        path = save_supernet(net, Path(tmp) / "sn.pt")
        on_cpu = load_supernet(path)
        back = load_supernet(path, device=rt.device)
        same = all(torch.equal(a.cpu(), b) and torch.equal(a, c) for a, b, c in
                   zip(net.state_dict().values(), on_cpu.state_dict().values(), back.state_dict().values()))
        info["checkpoint_device_round_trip"] = bool(same and next(on_cpu.parameters()).device.type == "cpu")
    return info


def step_rate(precision: str, cfg: dict, space: SearchSpace) -> dict:
    """Sandwich-step images/s under ``precision`` on synthetic batches already on the device."""
    rt = init_runtime("auto", precision)
    torch.manual_seed(0)
    net = OFAMobileNetV3Supernet(n_classes=cfg["classes"]).to(rt.device, memory_format=torch.channels_last).train()
    opt, scaler = make_optimizer(net, 0.01), grad_scaler(rt)
    rng = np.random.default_rng(0)
    r, b = cfg["resolution"], cfg["batch"]
    x = torch.randn(b, 3, r, r, device=rt.device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, cfg["classes"], (b,), device=rt.device)
    times = []
    for i in range(cfg["warmup"] + cfg["steps"]):
        archs = space.sample(rng, 2) + [space.smallest()]
        sync(rt)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        sandwich_backward(net, x, y, space.largest(), archs, 1.0, rt, scaler)
        if scaler is not None:
            scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        sync(rt)
        if i >= cfg["warmup"]:
            times.append(time.perf_counter() - t0)
    out = {"precision": precision, "images_per_s": b * len(times) / sum(times),
           "step_ms_median": 1e3 * float(np.median(times))}
    if rt.device.type == "cuda":
        out["max_memory_gib"] = torch.cuda.max_memory_allocated(rt.device) / 2**30
    return out


def _fwd_bwd_ms(fn, x: torch.Tensor, rt: Runtime, repeats: int) -> float:
    """Median ms of ``fn(x).sum().backward()`` under ``rt``'s precision, after one untimed call."""
    times = []
    for i in range(repeats + 1):
        sync(rt)
        t0 = time.perf_counter()
        with precision_context(rt):
            loss = fn(x).float().sum()
        loss.backward()
        sync(rt)
        if i:
            times.append(1e3 * (time.perf_counter() - t0))
    return float(np.median(times))


def step_breakdown(cfg: dict, space: SearchSpace) -> dict:
    """One fwd+bwd of the largest subnet: dynamic supernet against its static copy, channels_last against NCHW,
    fp32 against bf16, and the dynamic call with cuDNN autotuning on (its shapes fixed here, so what autotuning
    buys once every shape is tuned); then the top kernels of the dynamic call at each of those precisions, so
    that a kernel that bf16 slows stands out."""
    from torch.profiler import ProfilerActivity, profile

    out: dict = {}
    torch.manual_seed(0)
    largest = space.largest()
    for precision in cfg["breakdown_precisions"]:
        rt = init_runtime("auto", precision)
        for fmt_name, fmt in (("channels_last", torch.channels_last), ("nchw", torch.contiguous_format)):
            net = OFAMobileNetV3Supernet(n_classes=cfg["classes"]).to(rt.device, memory_format=fmt).train()
            static = net.extract_subnet(largest).to(memory_format=fmt)
            x = torch.randn(cfg["batch"], 3, cfg["resolution"], cfg["resolution"], device=rt.device)
            x = x.contiguous(memory_format=fmt)
            out[f"dynamic_{precision}_{fmt_name}_ms"] = _fwd_bwd_ms(lambda t: net(t, largest), x, rt, cfg["steps"])
            out[f"static_{precision}_{fmt_name}_ms"] = _fwd_bwd_ms(static, x, rt, cfg["steps"])
            if fmt is torch.channels_last:
                dynamic, x_cl = net, x
        torch.backends.cudnn.benchmark = True
        try:  # the untimed first call tunes every shape
            out[f"dynamic_{precision}_channels_last_autotuned_ms"] = _fwd_bwd_ms(lambda t: dynamic(t, largest), x_cl,
                                                                                rt, cfg["steps"])
        finally:
            torch.backends.cudnn.benchmark = False
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if rt.device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            _fwd_bwd_ms(lambda t: dynamic(t, largest), x_cl, rt, 1)
        events = prof.key_averages()
        # by device time on a GPU; on a CPU (the dry run) device time is 0 and CPU time orders the list
        rows = sorted(events, key=lambda e: (e.self_device_time_total, e.self_cpu_time_total), reverse=True)[:12]
        out[f"top_kernels_{precision}"] = [
            {"name": e.key[:90], "calls": e.count, "device_ms": round(e.self_device_time_total / 1e3, 2),
             "cpu_ms": round(e.self_cpu_time_total / 1e3, 2)} for e in rows]
        out[f"cpu_ms_total_{precision}"] = round(sum(e.self_cpu_time_total for e in events) / 1e3, 1)
        out[f"device_ms_total_{precision}"] = round(sum(e.self_device_time_total for e in events) / 1e3, 1)
    return out


def data_rate(cfg: dict) -> dict:
    """images/s of the in-memory pipeline (crop, flip, resize, normalise) at the training resolution."""
    data = synthetic_data(cfg["n_images"], cfg["storage"], cfg["classes"])
    out = {}
    for augment in (True, False):
        rng = np.random.default_rng(0)
        t0, n = time.perf_counter(), 0
        for x, _ in data.batches("train", cfg["data_batch"], cfg["resolution"], rng=rng, augment=augment):
            n += len(x)
        out["augment" if augment else "plain"] = n / (time.perf_counter() - t0)
    out["cpu_threads"] = torch.get_num_threads()
    return out


def end_to_end(cfg: dict, space: SearchSpace) -> dict:
    # bf16 on the GPU; on a CPU (the dry run) fp32, since bf16 training on CPU is already timed above and is slow
    rt = init_runtime("auto", "bf16" if torch.cuda.is_available() else "fp32")
    data = synthetic_data(cfg["e2e_images"], cfg["storage"], cfg["classes"])
    torch.manual_seed(0)
    net = OFAMobileNetV3Supernet(n_classes=cfg["classes"])
    states: list[int] = []
    t0 = time.perf_counter()
    res = train_epochs(net, data, space, 1, lambda g, n: space.sample(g, n), 2, seed=0, batch_size=cfg["batch"],
                       include_smallest=True, runtime=rt, on_checkpoint=lambda s: states.append(s["step"]),
                       checkpoint_every_s=30)
    sync(rt)
    t_train = time.perf_counter() - t0
    archs = [space.smallest(), space.largest()] + space.sample(np.random.default_rng(1), cfg["e2e_archs"] - 2)
    t1 = time.perf_counter()
    accs = evaluate_archs(net, archs, data, bn_batches=2, batch_size=cfg["batch"], runtime=rt)
    t_eval = time.perf_counter() - t1
    return {"precision": rt.precision, "train_images_per_s": len(data.train_y) / t_train, "train_s": t_train,
            "steps": res["steps"],
            "final_loss": res["final_loss"], "mid_phase_checkpoints": len(states),
            "eval_s_per_subnet": t_eval / len(archs), "accuracies": accs}


def cuda_table(cfg: dict, out_dir: Path | None) -> dict:
    """Profile the ``small`` preset on ``cfg['table_device']`` (``cuda`` on the GPU machine) into a table."""
    from natdeploy.devices import load_device
    from natdeploy.latency.profiler import profile_device

    spec = load_device(cfg["table_device"]).with_overrides(space="small", **cfg["table_overrides"])
    space = SearchSpace.preset("small", resolutions=cfg["table_resolutions"])
    folder = out_dir or Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    res = profile_device(spec, space, e2e_samples=cfg["table_e2e"], out=folder / f"{spec.name}.json", quiet=True)
    return {"device": spec.name, "table": str(res.table_path), "ops": res.n_ops, "e2e_subnets": res.n_e2e,
            "drift": res.drift, "profile_s": round(time.perf_counter() - t0, 1)}


def paper_iteration(cfg: dict) -> dict:
    """Time NAT's adaptation (pre-trained recipe, r 192-256, 4 subnets + the largest per step) and its subnet
    evaluations on a CIFAR-10-shaped subset, then project one full iteration from the measured per-image and
    per-subnet rates. The target is <= 10 minutes per iteration on one H200."""
    from natdeploy.search.nat import NATConfig

    rc = NATConfig.preset("paper", pretrained=True)
    space = SearchSpace.preset("ofa", resolutions=cfg["paper_resolutions"], widths=(1.0,))
    rt = init_runtime("auto", "bf16" if torch.cuda.is_available() else "fp32")
    storage = 256 if rt.device.type == "cuda" else 48
    data, val = synthetic_data(cfg["paper_train"], storage, 10), synthetic_data(cfg["paper_val"], storage, 10)
    data.val_x, data.val_y = val.train_x, val.train_y
    torch.manual_seed(0)
    net = OFAMobileNetV3Supernet(n_classes=10)
    t0 = time.perf_counter()
    res = train_epochs(net, data, space, 1, lambda g, n: space.sample(g, n), rc.subnets_per_step, seed=0, lr=rc.lr,
                       batch_size=rc.batch_size, kd_alpha=rc.kd_alpha, runtime=rt, weight_decay=rc.weight_decay)
    sync(rt)
    t_epoch = time.perf_counter() - t0
    per_image = t_epoch / len(data.train_y)
    archs = space.sample(np.random.default_rng(2), cfg["paper_archs"])
    bn_batches = -(-BN_IMAGES // rc.batch_size)
    t1 = time.perf_counter()
    evaluate_archs(net, archs, data, bn_batches=bn_batches, batch_size=256, runtime=rt)
    sync(rt)
    per_subnet = (time.perf_counter() - t1) / len(archs)
    # the validation pass grows with the split; the BN recalibration does not
    val_share = cfg["paper_val"] / (cfg["paper_val"] + min(BN_IMAGES, len(data.train_y)))
    per_subnet_full = per_subnet * (1 - val_share + val_share * CIFAR10_VAL / cfg["paper_val"])
    adapt_s = per_image * CIFAR10_TRAIN * rc.epochs_per_iter
    eval_s = per_subnet_full * EVALS_PER_ITERATION
    return {"precision": rt.precision, "resolutions": list(cfg["paper_resolutions"]), "batch_size": rc.batch_size,
            "subnets_per_step": rc.subnets_per_step, "measured_train_images": len(data.train_y),
            "train_images_per_s": 1 / per_image, "steps": res["steps"], "eval_s_per_subnet_measured": per_subnet,
            "projected_adaptation_min": adapt_s / 60, "projected_evaluation_min": eval_s / 60,
            "projected_iteration_min": (adapt_s + eval_s) / 60,
            "note": "projection from measured rates on synthetic CIFAR-10-shaped data; the surrogate and NSGA "
                    "step (seconds on a CPU) is not included"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes, to check the script end to end on CPU")
    ap.add_argument("--budget-s", type=float, default=540, help="stop starting sections after this many seconds")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON results (default: $OUT/gpu_check.json when $OUT is set)")
    args = ap.parse_args()
    cfg = DRY if args.dry_run else FULL
    out_path = args.out or (Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else None)
    torch.backends.cudnn.benchmark = False  # see the module's docstring
    clock = Clock(args.budget_s)
    space = SearchSpace(resolutions=(cfg["resolution"],), widths=(1.0,))
    rt = init_runtime("auto", "fp32")
    results: dict = {"mode": "dry-run" if args.dry_run else "full", "config": cfg}

    def save() -> None:
        if out_path is not None:
            out_path.parent.mkdir(parents=True, exist_ok=True)
            out_path.write_text(json.dumps(results, indent=1))

    def section(name: str, fn, min_left: float) -> None:
        if clock.left() < min_left:
            results[name] = {"skipped": f"{clock.left():.0f} s of the budget left"}
        else:
            t0 = time.perf_counter()
            try:
                results[name] = fn()
            except Exception as exc:  # report and go on: one failing section must not hide the others
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            results[name]["section_s"] = round(time.perf_counter() - t0, 1)
        print(f"[{name}] {json.dumps(results[name])}", flush=True)
        save()

    section("device", lambda: device_section(rt), 0)
    section("cuda_table", lambda: cuda_table(cfg, out_path.parent if out_path else None), 150)
    section("step_breakdown", lambda: step_breakdown(cfg, space), 90)
    for p in ("fp32", "bf16"):
        section(f"train_{p}", lambda p=p: step_rate(p, cfg, space), 75)
    section("data_pipeline", lambda: data_rate(cfg), 45)
    section("paper_iteration", lambda: paper_iteration(cfg), 180)
    section("end_to_end", lambda: end_to_end(cfg, space), 120)
    fp32, bf16 = results.get("train_fp32", {}), results.get("train_bf16", {})
    if "images_per_s" in fp32 and "images_per_s" in bf16:
        results["bf16_over_fp32"] = bf16["images_per_s"] / fp32["images_per_s"]
        print(f"bf16/fp32 training speed: {results['bf16_over_fp32']:.2f}x (target >= 1.5x on the GPU)")
    pipe = results.get("data_pipeline", {})
    best = max((r.get("images_per_s", 0) for r in (fp32, bf16)), default=0)
    if "augment" in pipe and best:
        results["pipeline_over_training"] = pipe["augment"] / best
        print(f"data pipeline / fastest training step: {results['pipeline_over_training']:.2f}x "
              "(>= 1.5 means the data keeps up)")
    it = results.get("paper_iteration", {})
    if "projected_iteration_min" in it:
        print(f"one NAT iteration at paper settings, projected: {it['projected_iteration_min']:.1f} min "
              "(target <= 10 min on one H200)")
    print(f"total {time.monotonic() - clock.t0:.0f} s")
    save()


if __name__ == "__main__":
    main()
