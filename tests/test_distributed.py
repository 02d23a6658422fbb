"""Multi-process training and evaluation on real gloo process groups, started as torchrun starts them.

The test launches this file once per rank with RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT set, and the ranks run
every scenario one after the other; they save what they saw in each, and the tests compare it with a one-process run
in the test's own process.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import natdeploy.stream
import natdeploy.train
from natdeploy.data import ImageData, load_image_folder
from natdeploy.distributed import (LOCAL, AcceleratorError, DistributedError, Runtime, all_reduce_gradients,
                                   average_bn_statistics, check_same_config, init_runtime, shard_range,
                                   train_bn_reducer)
from natdeploy.space import SearchSpace
from natdeploy.stream import stream_image_folder
from natdeploy.supernet import OFAMobileNetV3Supernet
from natdeploy.supernet.layers import sync_batch_norm
from natdeploy.train import evaluate_archs, sandwich_backward, train_epochs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_stream import _folder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPACE = SearchSpace(resolutions=(32, 40), widths=(1.0,))


def tiny_data(n_train: int = 45, n_val: int = 24) -> ImageData:
    g = torch.Generator().manual_seed(0)
    tx = torch.randint(0, 256, (n_train, 3, 32, 32), dtype=torch.uint8, generator=g)
    vx = torch.randint(0, 256, (n_val, 3, 32, 32), dtype=torch.uint8, generator=g)
    ty, vy = torch.arange(n_train) % 4, torch.arange(n_val) % 4
    return ImageData(tx, ty, vx, vy, [str(i) for i in range(4)], "random")


def fresh_net(dropout: float = 0.0) -> OFAMobileNetV3Supernet:
    torch.manual_seed(0)
    return OFAMobileNetV3Supernet(n_classes=4, dropout_rate=dropout)


def params_digest(net: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for p in net.parameters():
        h.update(p.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def grad_batch() -> tuple[torch.Tensor, torch.Tensor, list]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 3, 32, 32, generator=g).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 4, (7,), generator=g)
    return x, y, SPACE.sample(np.random.default_rng(2), 2)


def sandwich_grads(rt: Runtime) -> dict[str, torch.Tensor]:
    net = fresh_net().to(memory_format=torch.channels_last).train()
    x, y, archs = grad_batch()
    with sync_batch_norm(net, train_bn_reducer(rt, len(y))):
        sandwich_backward(net, x, y, SPACE.largest(), archs, 1.0, rt)
    all_reduce_gradients(net, rt)
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


def ghost_batch_grads(world: int = 2) -> dict[str, torch.Tensor]:
    """One process, BN per shard: each rank's shard is its own BN batch (the ``local`` BN mode), losses weighted by
    the shard's share of the global batch, gradients accumulated over the shards."""
    net = fresh_net().to(memory_format=torch.channels_last).train()
    x, y, archs = grad_batch()
    for rank in range(world):
        sandwich_backward(net, x, y, SPACE.largest(), archs, 1.0, Runtime(rank=rank, world_size=world))
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


def train_run(rt: Runtime, dropout: float) -> tuple[list[str], list[torch.Tensor], dict]:
    """Per-step parameter digests, the parameters after each of the first 2 steps, and train_epochs' result."""
    net, digests, early = fresh_net(dropout), [], []

    def after_step(step: int, total: int) -> None:
        digests.append(params_digest(net))
        if step <= 2:
            early.append(torch.cat([p.detach().reshape(-1) for p in net.parameters()]))

    # 43 images in batches of 20: the last batch of 3 has a 1-image shard, which BN synchronises in either mode
    out = train_epochs(net, tiny_data(n_train=43), SPACE, 2, lambda r, n: SPACE.sample(r, n), 1, seed=5, lr=0.1,
                       batch_size=20, include_smallest=True, runtime=rt, progress=after_step)
    return digests, early + [torch.cat([b.reshape(-1).float() for b in net.buffers()])], out


def eval_list(rt: Runtime) -> list[float]:
    archs = [SPACE.smallest(), SPACE.largest()] + SPACE.sample(np.random.default_rng(3), 1)
    return evaluate_archs(fresh_net(), archs, tiny_data(), bn_batches=1, batch_size=16, seed=0, val_limit=16,
                          runtime=rt)


def shards_seen(rt: Runtime, data) -> tuple[list[tuple[torch.Tensor, torch.Tensor, int]], list[str], str]:
    """One epoch of train_epochs on ``data``: each step's (x, y, global batch) as this rank's sandwich_backward got
    them, the files this rank decoded while training (streamed data), and the parameters' digest after it."""
    seen, decoded = [], []
    real_backward, real_decode = natdeploy.train.sandwich_backward, natdeploy.stream.decode_image

    def spy(net, x, y, *args, **kwargs):
        seen.append((x.clone(), y.clone(), kwargs.get("global_batch", len(y))))
        return real_backward(net, x, y, *args, **kwargs)

    def counting_decode(path, size):
        decoded.append(str(path))
        return real_decode(path, size)

    natdeploy.train.sandwich_backward, natdeploy.stream.decode_image = spy, counting_decode
    try:
        net = fresh_net()
        train_epochs(net, data, SPACE, 1, lambda r, n: SPACE.sample(r, n), 1, seed=5, lr=0.1, batch_size=7,
                     include_smallest=True, runtime=rt)
    finally:
        natdeploy.train.sandwich_backward, natdeploy.stream.decode_image = real_backward, real_decode
    return seen, decoded, params_digest(net)


def stream_scenario(rt: Runtime, root: Path) -> dict:
    """Memory and stream mode on one folder (workers=0, so decoding happens in this process, where it is counted),
    then stream mode again after one training file turned unreadable."""
    out = {"memory": shards_seen(rt, load_image_folder(root, size=16, seed=3))}
    stream = stream_image_folder(root, size=16, seed=3, workers=0)
    out["stream"] = shards_seen(rt, stream)
    out["files"] = [str(f) for f in stream.train_files]
    if rt.rank == 0:
        stream.train_files[4].write_bytes(b"not an image")
    check_same_config("corrupted", rt)  # a collective: rank 1 waits for the corruption
    out["corrupt"] = shards_seen(rt, stream)
    out["skipped"] = stream.skipped
    return out


# ----- the rank side ------------------------------------------------------------------------------------------
def _rank_scenario(scenario: str, rt: Runtime, out: Path) -> dict:
    result: dict = {"rank": rt.rank}
    try:
        if scenario == "main":
            check_same_config({"seed": 5, "data": "random"}, rt)
            result["grads"] = sandwich_grads(rt)
            result["grads_sync"] = sandwich_grads(replace(rt, batch_norm="sync"))
            result["train"] = train_run(rt, dropout=0.0)
            result["train_sync"] = train_run(replace(rt, batch_norm="sync"), dropout=0.0)
            result["train_dropout"] = train_run(rt, dropout=0.1)[0]
            result["eval"] = eval_list(rt)
        elif scenario == "stream":
            result["stream"] = stream_scenario(rt, out / "images")
        elif scenario == "mismatch":
            result["t0"] = time.monotonic()
            check_same_config({"seed": 5, "lr": 0.1 if rt.rank == 0 else 0.2}, rt)
        elif scenario == "dead":
            if rt.rank == 1:
                os._exit(3)
            result["t0"] = time.monotonic()
            time.sleep(1.0)
            train_run(rt, dropout=0.0)
    except DistributedError as exc:
        result["error"] = str(exc)
        result["t1"] = time.monotonic()
    return result


def _rank_main(scenarios: str, out: Path) -> None:
    """The comma-separated ``scenarios`` in order, in one process group; each saves to ``out/<scenario>/``."""
    torch.set_num_threads(1)
    rt = init_runtime("cpu", "fp32", timeout_s=float(os.environ.get("TEST_TIMEOUT_S", "60")))
    for scenario in scenarios.split(","):
        result = _rank_scenario(scenario, rt, out)
        (out / scenario).mkdir(exist_ok=True)
        torch.save(result, out / scenario / f"rank{rt.rank}.pt")


# ----- the test side ------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(scenarios: list[str], tmp_path: Path, world: int = 2, timeout_s: float = 20,
           wait_s: float = 240) -> dict[str, list[dict]]:
    """Start ``world`` ranks the way torchrun does, which run ``scenarios`` one after the other in one process
    group (starting the ranks is most of a short scenario's cost); returns what each rank saved for each scenario
    (None if nothing)."""
    port = _free_port()
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "TEST_TIMEOUT_S": str(timeout_s),
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, __file__, ",".join(scenarios), str(tmp_path)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=wait_s)[0].decode(errors="replace"))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"scenarios {scenarios} hung for more than {wait_s} s")
    results = {}
    for scenario in scenarios:
        paths = [tmp_path / scenario / f"rank{rank}.pt" for rank in range(world)]
        results[scenario] = [torch.load(p, weights_only=True) if p.exists() else None for p in paths]
        if scenario != "dead":
            assert all(r is not None for r in results[scenario]), "\n".join(logs)
    return results


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> dict[str, list[dict]]:
    """One launch of two ranks for every scenario: the main one, then a mismatched configuration (which fails on
    every rank and leaves the group usable), then a dead rank (which ends the group)."""
    return launch(["main", "mismatch", "dead"], tmp_path_factory.mktemp("ranks"))


@pytest.fixture(scope="module")
def main_results(launched) -> list[dict]:
    return launched["main"]


def test_shard_range_covers_in_order():
    for n in (0, 1, 5, 8):
        for world in (1, 2, 3):
            parts = [shard_range(n, Runtime(rank=r, world_size=world)) for r in range(world)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            assert max(h - lo for lo, h in parts) - min(h - lo for lo, h in parts) <= 1


def _flat(d: dict[str, torch.Tensor], keys) -> torch.Tensor:
    return torch.cat([d[k].double().reshape(-1) for k in keys])


def test_bn_mode_per_step():
    two, sync = Runtime(rank=0, world_size=2), Runtime(rank=1, world_size=2, batch_norm="sync")
    assert train_bn_reducer(LOCAL, 1) is None and train_bn_reducer(two, 4) is None
    assert train_bn_reducer(two, 3) is not None  # a 1-image shard: synchronised
    assert train_bn_reducer(sync, 64) is not None
    net = fresh_net()
    before = [b.clone() for b in net.buffers()]
    average_bn_statistics(net, LOCAL)  # one process: nothing to do, no process group needed
    assert all(torch.equal(a, b) for a, b in zip(before, net.buffers()))


@pytest.mark.parametrize("mode", ["local", "sync"])
def test_two_process_gradient_equals_one_process_gradient(main_results, mode):
    """local BN: the one-process gradient with each shard as its own BN batch; sync BN: the plain one-process
    gradient over the global batch."""
    ref = ghost_batch_grads(2) if mode == "local" else sandwich_grads(LOCAL)
    keys = sorted(ref)
    scale = max(float(v.abs().max()) for v in ref.values())
    for res in main_results:
        got = res["grads" if mode == "local" else "grads_sync"]
        assert set(got) == set(ref)  # the same parameters unused (grad None) as in one process
        # float32 BN on 7 images of a fresh network is ill-conditioned: one-process float32 itself is 2e-4 away
        # from float64 here, so the tolerance is a few times that
        err = float((_flat(got, keys) - _flat(ref, keys)).norm() / _flat(ref, keys).norm())
        assert err < 1e-3
        for k in keys:
            torch.testing.assert_close(got[k], ref[k], rtol=1e-2, atol=2e-3 * scale, msg=k)
    for k in keys:
        assert torch.equal(main_results[0]["grads"][k], main_results[1]["grads"][k])
        assert torch.equal(main_results[0]["grads_sync"][k], main_results[1]["grads_sync"][k])


def test_parameters_bit_identical_across_ranks_after_every_step(main_results):
    for key in ("train", "train_sync"):
        (d0, s0, o0), (d1, s1, o1) = main_results[0][key], main_results[1][key]
        assert len(d0) == 6 and d0 == d1  # 43 images in batches of 20: 3 steps an epoch, the last shard uneven
        assert torch.equal(s0[-1], s1[-1])  # BN running statistics too (averaged every step in local mode)
        assert o0 == o1
    assert main_results[0]["train_dropout"] == main_results[1]["train_dropout"]
    # sync BN: close to one process over the same global batch after the first step; float noise grows fast in
    # this fresh network at lr 0.1 (one process with only BN's arithmetic changed: 1e-5 after step 1, 5e-4 after
    # step 2)
    s0 = main_results[0]["train_sync"][1]
    _, ref, _ = train_run(LOCAL, dropout=0.0)
    assert float((s0[0] - ref[0]).norm() / ref[0].norm()) < 1e-4


def test_each_rank_decodes_only_its_shard_in_stream_mode(tmp_path):
    """Stream mode: every rank gets memory mode's shard of every global batch (the one-process global batch cut by
    shard_range) and decodes only those files; an unreadable file shortens only its rank's shard, and the ranks
    still agree on the global batch and stay bit-identical."""
    root = _folder(tmp_path / "images", n=9)
    ref, _, _ = shards_seen(LOCAL, load_image_folder(root, size=16, seed=3))
    assert [n for _, _, n in ref] == [7, 7, 7]  # 21 training images: shards of 4 and 3
    ranks = [r["stream"] for r in launch(["stream"], tmp_path)["stream"]]
    files = ranks[0]["files"]
    for rank, res in enumerate(ranks):
        mem, stream = res["memory"][0], res["stream"][0]
        assert len(mem) == len(stream) == len(ref)
        for (xm, ym, nm), (xs, ys, ns), (xr, yr, nr) in zip(mem, stream, ref):
            lo, hi = shard_range(nr, Runtime(rank=rank, world_size=2))
            assert nm == ns == nr and len(ym) == len(ys) == hi - lo
            assert torch.equal(xm, xr[lo:hi]) and torch.equal(ym, yr[lo:hi])
            torch.testing.assert_close(xs, xm, rtol=0, atol=1e-6)
            assert torch.equal(ys, ym)
        # this rank decoded exactly its shards' files, each once
        decoded = res["stream"][1]
        assert len(decoded) == len(set(decoded)) == sum(len(y) for _, y, _ in stream) == 12 - 3 * rank
    d0, d1 = set(ranks[0]["stream"][1]), set(ranks[1]["stream"][1])
    assert not d0 & d1 and d0 | d1 == set(files)
    # one file unreadable: skipped by the rank that read it; both ranks see the same global batches of 20 in all
    c0, c1 = ranks[0]["corrupt"], ranks[1]["corrupt"]
    assert [n for _, _, n in c0[0]] == [n for _, _, n in c1[0]] and sum(n for _, _, n in c0[0]) == 20
    assert sum(len(y) for _, y, _ in c0[0]) + sum(len(y) for _, y, _ in c1[0]) == 20
    assert ranks[0]["skipped"] + ranks[1]["skipped"] == 1 and c0[2] == c1[2]
    assert ranks[0]["stream"][2] == ranks[1]["stream"][2]


def test_evaluate_archs_same_list_on_every_rank(main_results):
    ref = eval_list(LOCAL)
    assert len(ref) == 3
    assert main_results[0]["eval"] == ref and main_results[1]["eval"] == ref


def test_mismatched_configuration_fails_fast_naming_the_rank(launched):
    for res in launched["mismatch"]:
        assert res["t1"] - res["t0"] < 20  # at once, not after the collectives' 20 s timeout
        assert "ranks [1] were started with a different configuration than rank 0" in res["error"]
        assert f"rank {res['rank']}:" in res["error"]


def test_dead_rank_makes_the_other_fail_clearly_within_bounded_time(launched):
    results = launched["dead"]
    assert results[1] is None
    err = results[0]["error"]
    assert err.startswith("rank 0: ") and "another rank died" in err and "--resume" in err
    assert results[0]["t1"] - results[0]["t0"] < 45


def test_accelerator_errors_are_one_line():
    with pytest.raises(AcceleratorError, match="fp16 runs on CUDA only; on CPU use --precision bf16"):
        init_runtime("cpu", "fp16")
    with pytest.raises(AcceleratorError, match="unknown"):
        init_runtime("tpu")
    assert init_runtime("cpu", "bf16").precision == "bf16"
    assert init_runtime("auto").device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        found = "(this torch .* without CUDA|torch .* sees no GPU)"
        with pytest.raises(AcceleratorError, match=f"needs a usable GPU, but {found}"):
            init_runtime("cuda")


if __name__ == "__main__":
    _rank_main(sys.argv[1], Path(sys.argv[2]))
