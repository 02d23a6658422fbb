"""Device specs: ``devices/<name>.yaml`` loaded into :class:`DeviceSpec`."""

from __future__ import annotations

import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from natdeploy import settings
from natdeploy.errors import ConfigError, DeviceSpecError

TRANSPORTS = ("local", "adb", "cuda")
RUNTIMES = ("onnxruntime", "litert", "torch")
PRECISIONS = ("fp32", "int8", "fp16")


def precision_problem(runtime: str, precision: str, gpu_delegate: bool, transport: str) -> str | None:
    """Why ``runtime`` cannot build models of ``precision`` (None when it can).

    int8 and fp16 models are built only by TFLite post-training quantisation (natdeploy.convert.tflite, the
    exporter's ``--int8``): onnxruntime and torch models are fp32. fp16 is float16 quantisation for the GPU
    delegate (which natdeploy applies over adb, through benchmark_model); the CPU kernels dequantise its weights and
    run fp32, so an fp16 CPU table would be an fp32 one.
    """
    if precision == "fp32":
        return None
    if runtime != "litert":
        return (f"precision {precision} needs runtime litert: natdeploy quantises only TFLite models, and its "
                f"{runtime} models are fp32")
    if precision == "fp16" and not (gpu_delegate and transport == "adb"):
        return ("precision fp16 is TFLite float16 quantisation for the GPU delegate, which natdeploy runs over adb "
                "(transport: adb, gpu_delegate: true); on the CPU, LiteRT dequantises fp16 weights and runs fp32, "
                "so use fp32 or int8 there")
    if precision == "int8" and gpu_delegate:
        return ("precision int8 with gpu_delegate: the GPU delegate computes in floating point; use fp16 (or fp32) "
                "on the GPU, or int8 on the CPU")
    return None


def devices_dir() -> Path:
    """Where device specs live: ``$NATDEPLOY_DEVICES`` or the project's ``devices/`` folder."""
    return settings.devices_dir()


def tables_dir() -> Path:
    """Where new latency tables go: ``$NATDEPLOY_TABLES`` or the user's data folder (tables are looked up by
    natdeploy.latency.store.table_path, which also reads the built-in ones)."""
    return settings.tables_dir()


def mask_cpus(mask: str) -> list[int]:
    """The CPU numbers of a hex affinity mask (``"70"`` or ``"0x70"``: cpu4-6); a clear error for a bad one."""
    digits = mask.lower().removeprefix("0x")
    if not re.fullmatch(r"[0-9a-f]+", digits) or int(digits, 16) == 0:
        raise DeviceSpecError(f"cpu_mask must be a non-zero hex mask such as '70' or 'f0', got {mask!r}")
    value = int(digits, 16)
    return [i for i in range(value.bit_length()) if value >> i & 1]


@dataclass(frozen=True)
class DeviceSpec:
    """How to run and time models on one target."""

    name: str
    description: str
    transport: str
    runtime: str
    threads: int = 1
    cpu_mask: str | None = None
    gpu_delegate: bool = False
    xnnpack: bool = True
    precision: str = "fp32"
    batch_size: int = 1
    warmup: int = 10
    runs: int = 30
    e2e_warmup: int = 5
    e2e_runs: int = 20
    serial: str | None = None
    benchmark_binary: str | None = None
    space: str = "small"
    resolutions: tuple[int, ...] = ()
    # Local runtimes: split the timed runs into this many round-robin rounds over a batch of models, spread over
    # at least min_span_s seconds (natdeploy.latency.measure.time_interleaved); 1 times each model back to back.
    # More rounds than runs count as one round per run.
    rounds: int = 1
    min_span_s: float = 0.0
    # With rounds > 1: also time a fixed anchor subnet in every batch, so that tables and checks can cancel
    # machine-speed drift between batches (natdeploy.latency.speed).
    anchor: bool = False
    # Where batches interleave: measure each whole subnet in this many independent batches (a fresh session each
    # time, the batch in another order) and keep the median (Measurement.combine). One batch's value moves by a few
    # percent with its session and its neighbours; the median of 3 is what tables and benchmarks compare.
    e2e_repeats: int = 1
    # Where tables carry anchor ratios: how a ratio changes with the machine's speed (natdeploy.latency.speed).
    # "auto" fits it on the table's end-to-end measurements at the end of `natdeploy profile`; a number fixes it;
    # 0 = ratios taken as speed-independent.
    speed_elasticity: str | float = 0.0
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, value, allowed in (("transport", self.transport, TRANSPORTS), ("runtime", self.runtime, RUNTIMES),
                                     ("precision", self.precision, PRECISIONS)):
            if value not in allowed:
                raise ConfigError(f"device {self.name!r}: {name}={value!r} is not allowed; allowed: {list(allowed)}")
        for name in ("threads", "batch_size", "runs", "e2e_runs", "e2e_repeats"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"device {self.name!r}: {name} must be a positive integer, got {getattr(self, name)!r}")
        if not isinstance(self.rounds, int) or self.rounds < 1:
            raise ConfigError(f"device {self.name!r}: rounds must be a positive integer, got {self.rounds!r}")
        if not isinstance(self.min_span_s, (int, float)) or not 0 <= self.min_span_s <= 60:
            raise ConfigError(f"device {self.name!r}: min_span_s must be 0 to 60 seconds, got {self.min_span_s!r}")
        e = self.speed_elasticity
        if e != "auto" and (isinstance(e, bool) or not isinstance(e, (int, float)) or not -2 <= e <= 2):
            raise ConfigError(f"device {self.name!r}: speed_elasticity must be 'auto' or a number from -2 to 2, "
                              f"got {e!r}")
        if self.cpu_mask is not None:
            if not isinstance(self.cpu_mask, str):  # YAML reads 70 as seventy and 0x70 as 112
                raise ConfigError(f"device {self.name!r}: cpu_mask must be a quoted hex string such as \"70\", "
                                  f"got {self.cpu_mask!r}")
            try:
                mask_cpus(self.cpu_mask)
            except ValueError as exc:
                raise ConfigError(f"device {self.name!r}: {exc}") from None
        if self.transport == "adb" and self.runtime != "litert":
            raise ConfigError(f"device {self.name!r}: the adb transport runs TFLite's benchmark_model; use runtime litert")
        why = precision_problem(self.runtime, self.precision, self.gpu_delegate, self.transport)
        if why:
            raise ConfigError(f"device {self.name!r}: {why}")
        res = self.resolutions
        if (not isinstance(res, (list, tuple))
                or not all(isinstance(r, int) and not isinstance(r, bool) and r > 0 for r in res)):
            raise ConfigError(f"device {self.name!r}: resolutions must be a list of positive integers (pixels), "
                              f"got {res!r}")
        object.__setattr__(self, "resolutions", tuple(res))

    def with_overrides(self, **changes: Any) -> "DeviceSpec":
        """A copy with the non-None values of ``changes`` applied (e.g. ``threads`` from the command line)."""
        d = asdict(self)
        d.update({k: v for k, v in changes.items() if v is not None})
        return DeviceSpec(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def known_devices(folder: Path | None = None) -> list[str]:
    folder = folder or devices_dir()
    return sorted(p.stem for p in folder.glob("*.yaml"))


def load_device(name_or_path: str, folder: Path | None = None) -> DeviceSpec:
    """Load a device spec by name (``devices/<name>.yaml``) or by path to a YAML file."""
    folder = folder or devices_dir()
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = folder / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown device {name_or_path!r}; known devices: {', '.join(known_devices(folder))} "
                          f"(or give the path to a device .yaml)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"device spec {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"device spec {path} must be a YAML mapping")
    allowed = {f.name for f in fields(DeviceSpec)}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"device spec {path} has unknown keys {unknown}; allowed: {sorted(allowed)}")
    raw.setdefault("name", path.stem)
    required = [f.name for f in fields(DeviceSpec) if f.default is MISSING and f.default_factory is MISSING]
    missing = [k for k in required if k not in raw]
    if missing:
        raise ConfigError(f"device spec {path} lacks the key(s) {missing}; every spec needs {required}")
    try:
        return DeviceSpec(**raw)
    except (ConfigError, TypeError) as exc:
        raise ConfigError(f"device spec {path}: {exc}") from None
