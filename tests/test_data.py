import numpy as np
import pytest
import torch

from natdeploy.data import DataError, load_digits_data, load_image_folder
from tiny_fixtures import image_folder


def _folder(root, n=6):
    return image_folder(root, ("cat", "dog"), n)


def test_digits_embedded_default():
    data = load_digits_data(size=32)
    assert data.n_classes == 10 and data.train_x.shape[1:] == (3, 32, 32) and data.train_x.dtype == torch.uint8
    assert len(data.train_y) + len(data.val_y) == 1797
    assert set(data.val_y.tolist()) == set(range(10))  # stratified split
    x, y = next(data.batches("train", 16, 40, rng=np.random.default_rng(0), augment=True))
    assert x.shape == (16, 3, 40, 40) and x.is_contiguous(memory_format=torch.channels_last)
    assert abs(float(x.mean())) < 1.0
    assert data.describe()["mean"] == list(data.mean)


def test_image_folder_split_and_val_folder(tmp_path):
    root = _folder(tmp_path / "train")
    data = load_image_folder(root, size=16, val_fraction=0.5, seed=1)
    assert data.classes == ["cat", "dog"] and len(data.train_y) == 6 and len(data.val_y) == 6
    assert data.train_x.shape[1:] == (3, 16, 16)
    val = _folder(tmp_path / "val", n=2)
    data2 = load_image_folder(root, val=val, size=16)
    assert len(data2.train_y) == 12 and len(data2.val_y) == 4


def test_image_folder_errors_and_corrupt_images(tmp_path, caplog):
    with pytest.raises(DataError, match="does not exist"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no images"):
        load_image_folder(tmp_path / "empty")
    (tmp_path / "flat").mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        load_image_folder(tmp_path / "flat")
    root = _folder(tmp_path / "data")
    (root / "cat" / "broken.jpg").write_bytes(b"not an image at all")
    data = load_image_folder(root, size=16)
    assert data.skipped == 1 and "1 unreadable image(s) skipped" in caplog.text
    bad = tmp_path / "allbad" / "x"
    bad.mkdir(parents=True)
    (bad / "a.png").write_bytes(b"junk")
    with pytest.raises(DataError, match="no readable images"):
        load_image_folder(tmp_path / "allbad")


def test_cifar10_jpegs_load(shared_data, tmp_path):
    import tarfile

    tar = shared_data / "cifar10-jpg.tar.gz"
    if not tar.exists():
        pytest.skip("cifar10-jpg.tar.gz is absent")
    with tarfile.open(tar) as tf:
        members = [m for m in tf.getmembers() if m.name.count("/") >= 2 and "/test/" in f"/{m.name}"][:40]
        tf.extractall(tmp_path, members=members, filter="data")
    test_dir = next(tmp_path.rglob("test"))
    data = load_image_folder(test_dir, size=32, val_fraction=0.25)
    assert data.n_classes >= 1 and data.train_x.shape[-1] == 32
