"""Training needs only torch and numpy: a machine without the search, latency and export stacks (a GPU box with
its own torch) can import natdeploy's training modules from the source tree and train."""

import os
import subprocess
import sys
from pathlib import Path

HEAVY = ("pymoo", "xgboost", "tensorflow", "keras", "ai_edge_litert", "adb_shell", "sklearn", "onnx", "onnxruntime",
         "matplotlib", "yaml")

SCRIPT = f"""
import sys
HEAVY = {HEAVY!r}
for name in HEAVY:  # None in sys.modules: import raises ModuleNotFoundError, importlib.util.find_spec says None
    sys.modules[name] = None
import numpy as np
import torch
import natdeploy.data, natdeploy.supernet, natdeploy.train
from natdeploy.data import ImageData
from natdeploy.space import SearchSpace
from natdeploy.supernet import OFAMobileNetV3Supernet
from natdeploy.train import evaluate_arch, train_epochs

g = torch.Generator().manual_seed(0)
x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=g)
y = torch.randint(0, 10, (16,), generator=g)
data = ImageData(train_x=x, train_y=y, val_x=x, val_y=y, classes=[str(i) for i in range(10)], source="random")
space = SearchSpace(resolutions=(32,), widths=(1.0,), name="tiny")
net = OFAMobileNetV3Supernet(n_classes=10)
train_epochs(net, data, space, 1, lambda rng, n: space.sample(rng, n), 1, seed=0, batch_size=8)
acc = evaluate_arch(net, space.sample(np.random.default_rng(0), 1)[0], data, bn_batches=1)
assert 0.0 <= acc <= 1.0, acc
print(sorted(m for m in HEAVY if sys.modules.get(m) is not None))
"""


def test_training_modules_need_only_torch_and_numpy():
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=root, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(root)})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
