"""Training on a runtime: precision, devices, checkpoints that move between devices, and mid-phase resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from natdeploy.data import ImageData
from natdeploy.distributed import Runtime, init_runtime
from natdeploy.errors import CheckpointError
from natdeploy.space import SearchSpace
from natdeploy.supernet import OFAMobileNetV3Supernet, load_supernet, save_supernet
from natdeploy.supernet.checkpoint import load_training_state, save_training_state
from natdeploy.train import evaluate_arch, train_epochs

SPACE = SearchSpace(resolutions=(32, 40), widths=(1.0,))
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def data() -> ImageData:
    g = torch.Generator().manual_seed(0)
    tx = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=g)
    vx = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=g)
    return ImageData(tx, torch.arange(40) % 4, vx, torch.arange(16) % 4, [str(i) for i in range(4)], "random")


def net() -> OFAMobileNetV3Supernet:
    torch.manual_seed(0)
    return OFAMobileNetV3Supernet(n_classes=4)  # with dropout, so resuming must restore torch's RNG too


def train(model, data, runtime=None, **kw) -> dict:
    return train_epochs(model, data, SPACE, 3, lambda r, n: SPACE.sample(r, n), 1, seed=7, lr=0.1, batch_size=16,
                        include_smallest=True, runtime=runtime, **kw)


def test_killed_mid_phase_and_resumed_is_bit_identical(data, tmp_path):
    full = net()
    states: list[str] = []

    def keep(state: dict) -> None:
        states.append(str(save_training_state(tmp_path / f"state{len(states)}.pt", state)))

    out = train(full, data, on_checkpoint=keep, checkpoint_every_s=0.0)
    # 40 images in batches of 16: 3 steps an epoch; a state after every step but each epoch's last, and after
    # every epoch but the last
    loaded = [load_training_state(p) for p in states]
    assert [(s["epoch"], s["batch"]) for s in loaded] == [(0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1),
                                                          (2, 2)]
    for state in (loaded[1], loaded[2], loaded[6]):  # mid-epoch, at an epoch's end, in the last epoch
        resumed = net()
        got = train(resumed, data, resume_from=state)
        assert got == out
        for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
            assert torch.equal(a, b), k


def test_resume_with_other_settings_is_refused(data, tmp_path):
    states: list[dict] = []
    train_epochs(net(), data, SPACE, 2, lambda r, n: SPACE.sample(r, n), 1, seed=7, batch_size=16,
                 on_checkpoint=states.append)
    with pytest.raises(CheckpointError, match="seed differ"):
        train_epochs(net(), data, SPACE, 2, lambda r, n: SPACE.sample(r, n), 1, seed=8, batch_size=16,
                     resume_from=states[0])
    with pytest.raises(CheckpointError, match="not a natdeploy training state"):
        train_epochs(net(), data, SPACE, 2, lambda r, n: SPACE.sample(r, n), 1, seed=7, resume_from={"step": 1})


def test_bf16_autocast_training_runs_on_cpu(data):
    rt = init_runtime("cpu", "bf16")
    model = net()
    out = train_epochs(model, data, SPACE, 1, lambda r, n: SPACE.sample(r, n), 1, seed=0, batch_size=20,
                       runtime=rt)
    assert out["steps"] == 2 and np.isfinite(out["final_loss"])
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast: weights stay fp32
    acc = evaluate_arch(model, SPACE.smallest(), data, bn_batches=1, batch_size=16, runtime=rt)
    assert 0.0 <= acc <= 1.0


def test_checkpoint_is_device_neutral(tmp_path):
    model = net()
    path = save_supernet(model, tmp_path / "sn.pt")
    loaded = load_supernet(path, device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


@needs_cuda
def test_cuda_checkpoint_loads_on_cpu_and_back(tmp_path):
    model = net().cuda()
    path = save_supernet(model, tmp_path / "sn.pt")
    on_cpu = load_supernet(path)
    assert next(on_cpu.parameters()).device.type == "cpu"
    back = load_supernet(path, device="cuda")
    assert all(torch.equal(a.cpu(), b.cpu()) for a, b in zip(model.state_dict().values(), back.state_dict().values()))


@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cuda_training_step(data, precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU lacks bf16")
    rt = init_runtime("cuda", precision)
    model = net()
    out = train_epochs(model, data, SPACE, 1, lambda r, n: SPACE.sample(r, n), 1, seed=0, batch_size=20,
                       runtime=rt)
    assert next(model.parameters()).device.type == "cuda"
    assert np.isfinite(out["final_loss"])
    acc = evaluate_arch(model, SPACE.smallest(), data, bn_batches=1, batch_size=16, runtime=rt)
    assert 0.0 <= acc <= 1.0


def test_default_runtime_is_one_cpu_process():
    rt = Runtime()
    assert (rt.rank, rt.world_size, rt.device.type, rt.precision, rt.is_main) == (0, 1, "cpu", "fp32", True)
