import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from natdeploy.data import ImageData, _augment, load_digits_data, load_image_folder
from natdeploy.errors import ConfigError
from natdeploy.stream import (StreamData, available_cores, load_image_data, resolve_workers,
                              stream_image_folder)


def _folder(root, classes=("ant", "bee", "cat"), n=7):
    """Mixed PNG and JPEG files of several non-square sizes, so centre-crop and resize are exercised."""
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            h, w = int(rng.integers(14, 30)), int(rng.integers(14, 30))
            img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
            img.save(root / c / (f"{i}.png" if i % 2 else f"{i}.jpg"))
    return root


def _epoch(data, rng, shard=(0, 1), batch=5, res=12, augment=True, split="train"):
    """Batches as train.py takes them: it draws subnets from the same rng between batches."""
    xs, ys = [], []
    for x, y in data.batches(split, batch, res, rng=rng, augment=augment, shard=shard):
        xs.append(x)
        ys.append(y)
        if rng is not None:
            rng.integers(0, 10, 3)
    return xs, ys


def _loop_augment(x, rng, hflip=True):
    """The per-image loop crop_flip replaced (reflect pad, crop, flip), kept as the reference."""
    n, _, s, _ = x.shape
    pad = max(1, s // 8)
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    offs = rng.integers(0, 2 * pad + 1, size=(n, 2))
    flips = (rng.random(n) < 0.5) & hflip
    out = torch.empty_like(x)
    for i in range(n):
        crop = padded[i, :, offs[i, 0]:offs[i, 0] + s, offs[i, 1]:offs[i, 1] + s]
        out[i] = crop.flip(-1) if flips[i] else crop
    return out


@pytest.mark.parametrize("size", [8, 17, 32])
@pytest.mark.parametrize("hflip", [True, False])
def test_vectorised_augment_is_bit_identical_to_the_loop(size, hflip):
    x = torch.rand(9, 3, size, size)
    assert torch.equal(_augment(x, np.random.default_rng(4), hflip), _loop_augment(x, np.random.default_rng(4), hflip))


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_and_memory_give_the_same_batches_in_the_same_seeded_order(tmp_path, workers):
    root = _folder(tmp_path / "train")
    mem = load_image_folder(root, size=16, seed=3)
    stream = stream_image_folder(root, size=16, seed=3, workers=workers)
    assert isinstance(stream, StreamData) and stream.describe() == mem.describe()
    assert torch.equal(stream.train_y, mem.train_y) and torch.equal(stream.val_y, mem.val_y)
    for seed in (0, 1):
        (xm, ym), (xs, ys) = _epoch(mem, np.random.default_rng(seed)), _epoch(stream, np.random.default_rng(seed))
        assert [len(y) for y in ym] == [len(y) for y in ys] == [5, 5, 5, 3]
        for a, b, c, d in zip(xm, xs, ym, ys):
            assert torch.equal(c, d)
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
            assert b.is_contiguous(memory_format=torch.channels_last)
    (xm, ym), (xs, ys) = _epoch(mem, None, split="val", augment=False), _epoch(stream, None, split="val",
                                                                               augment=False)
    torch.testing.assert_close(torch.cat(xm), torch.cat(xs), rtol=0, atol=1e-6)
    assert torch.equal(torch.cat(ym), torch.cat(ys))


def test_stream_with_a_val_folder_matches_memory(tmp_path):
    root, val = _folder(tmp_path / "train", n=4), _folder(tmp_path / "val", n=2)
    mem = load_image_folder(root, val=val, size=16, limit_per_class=3, val_limit_per_class=1)
    stream = stream_image_folder(root, val=val, size=16, limit_per_class=3, val_limit_per_class=1, workers=0)
    assert stream.describe() == mem.describe() and len(stream.val_y) == 3
    xm, _ = _epoch(mem, None, split="val", augment=False)
    xs, _ = _epoch(stream, None, split="val", augment=False)
    torch.testing.assert_close(torch.cat(xm), torch.cat(xs), rtol=0, atol=1e-6)


def test_sharded_batches_concatenate_to_the_unsharded_ones(tmp_path):
    root = _folder(tmp_path / "train")
    for data in (load_image_folder(root, size=16), stream_image_folder(root, size=16, workers=0)):
        data.hflip = True
        full_x, full_y = _epoch(data, np.random.default_rng(7), batch=6)
        parts = [_epoch(data, np.random.default_rng(7), shard=(r, 4), batch=6) for r in range(4)]
        for b in range(len(full_x)):
            assert torch.equal(torch.cat([p[0][b] for p in parts]), full_x[b])
            assert torch.equal(torch.cat([p[1][b] for p in parts]), full_y[b])
        with pytest.raises(ValueError, match="shard"):
            next(data.batches("train", 4, 12, shard=(2, 2)))


def test_digits_in_memory_are_unchanged_by_sharding_and_device_cpu():
    data = load_digits_data(size=32)
    a = _epoch(data, np.random.default_rng(0), batch=64, res=24)[0][:3]
    b = [x for x, _ in data.to("cpu").batches("train", 64, 24, rng=np.random.default_rng(0), augment=True,
                                              device="cpu")][:1]
    assert torch.equal(a[0], b[0])


def test_corrupt_image_mid_epoch_is_skipped_and_counted(tmp_path, caplog):
    root = _folder(tmp_path / "train")
    stream = stream_image_folder(root, size=16, workers=1)
    assert stream.skipped == 0
    victim = stream.train_files[2]
    victim.write_bytes(b"this is not an image")  # broken after the dataset was listed
    with caplog.at_level(logging.WARNING, logger="natdeploy.stream"):
        for _ in range(2):
            _, ys = _epoch(stream, np.random.default_rng(0))
            assert sum(len(y) for y in ys) == len(stream.train_y) - 1
    assert stream.skipped == 1 and stream.describe()["skipped_images"] == 1
    assert caplog.text.count(f"skipping unreadable image {victim}") == 1  # logged once, counted once


def test_a_batch_left_empty_is_dropped_with_one_process_and_kept_with_several(tmp_path):
    root = _folder(tmp_path / "train", classes=("a", "b"), n=3)
    stream = stream_image_folder(root, size=16, workers=0)
    for path in stream.train_files[:2]:
        path.write_bytes(b"junk")
    assert [len(y) for _, y in stream.batches("train", 2, 12)] == [2]
    assert [len(y) for _, y in stream.batches("train", 2, 12, shard=(0, 2))] == [0, 1]


def test_auto_mode_chooses_from_the_decoded_size(tmp_path, caplog):
    root = _folder(tmp_path / "train")
    with caplog.at_level(logging.INFO, logger="natdeploy.stream"):
        small = load_image_data(root, size=16, mode="auto", memory_budget_bytes=10**9, workers=0)
        big = load_image_data(root, size=16, mode="auto", memory_budget_bytes=1000, workers=0)
    assert isinstance(small, ImageData) and isinstance(big, StreamData)
    need = 21 * 3 * 16 * 16
    assert f"data loading: memory (21 images decoded at 16 px take {need / 1e9:.2f} GB, within" in caplog.text
    assert "data loading: stream (21 images" in caplog.text and "over the budget" in caplog.text
    assert isinstance(load_image_data(root, size=16, mode="stream", workers=0), StreamData)
    assert isinstance(load_image_data(root, size=16, mode="memory"), ImageData)
    assert isinstance(load_image_data(root, size=16, workers=0), ImageData)  # default budget: plenty here
    with pytest.raises(ConfigError, match="--data-loading 'disk'"):
        load_image_data(root, mode="disk")


def test_workers_beyond_the_cores_warn_and_use_the_cores(caplog):
    cores = available_cores()
    with caplog.at_level(logging.WARNING, logger="natdeploy.stream"):
        assert resolve_workers(cores + 3) == cores
    assert f"--workers {cores + 3} is more than the {cores} core(s) available" in caplog.text
    assert resolve_workers(None) == cores and resolve_workers(0) == 0
    with pytest.raises(ConfigError):
        resolve_workers(-1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_match_cpu_in_both_modes(tmp_path):
    root = _folder(tmp_path / "train")
    mem = load_image_folder(root, size=16)
    on_gpu = mem.to("cuda")
    assert on_gpu.train_x.is_cuda
    cpu_x, cpu_y = _epoch(mem, np.random.default_rng(0))
    for data in (on_gpu, stream_image_folder(root, size=16, workers=1).to("cuda")):
        gx, gy = _epoch(data, np.random.default_rng(0))
        assert all(x.is_cuda for x in gx)
        torch.testing.assert_close(torch.cat(gx).cpu(), torch.cat(cpu_x), rtol=0, atol=1e-4)
        assert torch.equal(torch.cat(gy).cpu(), torch.cat(cpu_y))


def test_train_epochs_runs_the_same_on_memory_and_stream_data(tmp_path):
    from natdeploy.space import SearchSpace
    from natdeploy.supernet import OFAMobileNetV3Supernet
    from natdeploy.train import train_epochs

    root = _folder(tmp_path / "train", n=4)
    space = SearchSpace(resolutions=(32,), widths=(1.0,))
    nets = []
    for data in (load_image_folder(root, size=32), stream_image_folder(root, size=32, workers=1)):
        torch.manual_seed(0)
        net = OFAMobileNetV3Supernet(n_classes=3)
        train_epochs(net, data, space, 1, lambda rng, n: space.sample(rng, n), 1, seed=0, batch_size=3)
        nets.append(net)
    for (name, a), b in zip(nets[0].state_dict().items(), nets[1].state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
