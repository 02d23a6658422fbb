"""The bundle's README.md, generated from its metadata so the usage snippets match the model exactly."""

from __future__ import annotations

from typing import Any


def _floats(values: list[float], suffix: str = "") -> str:
    return ", ".join(f"{float(v)!r}{suffix}" for v in values)


def _quant(meta: dict[str, Any], side: str) -> dict[str, Any] | None:
    return meta[side].get("tflite", {}).get("quantization")


def _plus(zero_point: int) -> str:
    """``+ 3`` or ``- 50``: the zero point as a term of an expression."""
    return f"{'+' if zero_point >= 0 else '-'} {abs(int(zero_point))}"


def _kotlin(meta: dict[str, Any]) -> str:
    inp, out = meta["input"], meta["output"]
    r, n, tfl = inp["resolution"], out["n_classes"], inp["tflite"]
    pre = inp["preprocessing"]
    qin, qout = _quant(meta, "input"), _quant(meta, "output")
    bytes_per = 1 if qin else 4
    if qin:
        put = (f"val q = ((rgb[c] - MEAN[c]) / STD[c] / {float(qin['scale'])!r}f {_plus(qin['zero_point'])})"
               ".roundToInt().coerceIn(-128, 127)\n            input.put(q.toByte())")
    else:
        put = "input.putFloat((rgb[c] - MEAN[c]) / STD[c])"
    if qout:
        out_decl = f"val raw = Array(1) {{ ByteArray({n}) }}"
        out_read = (f"val logits = FloatArray({n}) {{ (raw[0][it] {_plus(-qout['zero_point'])}) * "
                    f"{float(qout['scale'])!r}f }}")
    else:
        out_decl = f"val raw = Array(1) {{ FloatArray({n}) }}"
        out_read = "val logits = raw[0]"
    return f"""```kotlin
// build.gradle: implementation("com.google.ai.edge.litert:litert:1.+")   (LiteRT keeps the
// org.tensorflow.lite package names)
import android.graphics.Bitmap
import org.tensorflow.lite.Interpreter
import java.nio.ByteBuffer
import java.nio.ByteOrder
import kotlin.math.roundToInt

const val SIZE = {r}
val MEAN = floatArrayOf({_floats(pre['mean'], 'f')})
val STD = floatArrayOf({_floats(pre['std'], 'f')})

fun classify(interpreter: Interpreter, bitmap: Bitmap, labels: List<String>): String {{
    // {pre['color_order']}, values {pre['value_scale']}, centre square crop, resize to SIZE x SIZE
    val side = minOf(bitmap.width, bitmap.height)
    val square = Bitmap.createBitmap(bitmap, (bitmap.width - side) / 2, (bitmap.height - side) / 2, side, side)
    val scaled = Bitmap.createScaledBitmap(square, SIZE, SIZE, true)
    val pixels = IntArray(SIZE * SIZE)
    scaled.getPixels(pixels, 0, SIZE, 0, 0, SIZE, SIZE)
    // input "{inp['name']}": {tfl['dtype']} {tfl['shape']} ({tfl['layout']})
    val input = ByteBuffer.allocateDirect(SIZE * SIZE * 3 * {bytes_per}).order(ByteOrder.nativeOrder())
    for (p in pixels) {{
        val rgb = floatArrayOf(((p shr 16) and 0xFF) / 255f, ((p shr 8) and 0xFF) / 255f, (p and 0xFF) / 255f)
        for (c in 0 until 3) {{
            {put}
        }}
    }}
    input.rewind()
    {out_decl}
    interpreter.run(input, raw)
    {out_read}
    return labels[logits.indices.maxByOrNull {{ logits[it] }}!!]
}}

// val interpreter = Interpreter(FileUtil.loadMappedFile(context, "model.tflite"))
// val labels = context.assets.open("labels.txt").bufferedReader().readLines()
```"""


def _python_common(meta: dict[str, Any], runtime_import: str) -> str:
    pre = meta["input"]["preprocessing"]
    return f"""import numpy as np
from PIL import Image
{runtime_import}

SIZE = {meta['input']['resolution']}
MEAN = np.array([{_floats(pre['mean'])}], dtype=np.float32)
STD = np.array([{_floats(pre['std'])}], dtype=np.float32)
labels = open("labels.txt").read().splitlines()


def preprocess(path):
    \"\"\"HWC float32, {pre['color_order']}: centre square crop, SIZE x SIZE, {pre['value_scale']}, normalised.\"\"\"
    im = Image.open(path).convert("RGB")
    w, h = im.size
    s = min(w, h)
    im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    im = im.resize((SIZE, SIZE), Image.BILINEAR)
    return (np.asarray(im, dtype=np.float32) / 255.0 - MEAN) / STD"""


def _python_tflite(meta: dict[str, Any]) -> str:
    qin, qout = _quant(meta, "input"), _quant(meta, "output")
    lines = [_python_common(meta, "from ai_edge_litert.interpreter import Interpreter"), "", "",
             'interp = Interpreter(model_path="model.tflite")', "interp.allocate_tensors()",
             "inp, out = interp.get_input_details()[0], interp.get_output_details()[0]",
             f'x = preprocess("image.jpg")[None]  # {meta["input"]["tflite"]["layout"]} '
             f'{meta["input"]["tflite"]["shape"]}']
    if qin:
        lines.append(f"x = np.clip(np.round(x / {float(qin['scale'])!r} {_plus(qin['zero_point'])}), -128, 127)"
                     ".astype(np.int8)")
    lines += ['interp.set_tensor(inp["index"], x)', "interp.invoke()", 'logits = interp.get_tensor(out["index"])[0]']
    if qout:
        lines.append(f"logits = (logits.astype(np.float32) {_plus(-qout['zero_point'])}) * {float(qout['scale'])!r}")
    lines.append("print(labels[int(logits.argmax())])")
    return "```python\n" + "\n".join(lines) + "\n```"


def _python_onnx(meta: dict[str, Any]) -> str:
    o = meta["input"]["onnx"]
    body = [_python_common(meta, "import onnxruntime as ort"), "", "",
            'sess = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])',
            f'x = preprocess("image.jpg").transpose(2, 0, 1)[None]  # {o["layout"]} {o["shape"]}',
            f'logits = sess.run(["{meta["output"]["name"]}"], {{"{meta["input"]["name"]}": x}})[0][0]',
            "print(labels[int(logits.argmax())])"]
    return "```python\n" + "\n".join(body) + "\n```"


def _latency_lines(meta: dict[str, Any]) -> list[str]:
    rows = []
    for device, d in meta["latency"].items():
        pred = f"{d['predicted_ms']:.3f} ms" if d.get("predicted_ms") is not None else "-"
        meas = (f"{d['measured_ms']:.3f} ms" if isinstance(d.get("measured_ms"), (int, float))
                else str(d.get("measured_ms") or "-"))
        if d.get("measured_at_table_speed_ms") is not None:
            meas += f" ({d['measured_at_table_speed_ms']:.3f} ms at the table's machine speed)"
        budget = f"{d['budget_ms']:g} ms" if d.get("budget_ms") is not None else "-"
        rows.append(f"| {device} | {pred} | {meas} | {budget} |")
    if not rows:
        return []
    return ["| device | predicted | measured | budget |", "|---|---|---|---|", *rows]


def render_readme(meta: dict[str, Any]) -> str:
    """README.md text for a bundle's metadata."""
    arch, inp = meta["arch"], meta["input"]
    pre = inp["preprocessing"]
    files = list(meta["files"])
    acc = meta["accuracy"].get("val_top1_fp32")
    parts = [f"# {arch['string']}", "",
             f"A MobileNetV3 subnet exported by natdeploy {meta['natdeploy_version']}: {arch['madds'] / 1e6:.1f}M "
             f"MAdds, {arch['params'] / 1e6:.3f}M params, {meta['output']['n_classes']} classes"
             + (f", top-1 {100 * acc:.2f}% on the validation set (PyTorch fp32)." if acc is not None else "."), "",
             "Files: " + ", ".join(f"`{f}`" for f in files + ["labels.txt", "metadata.json"]) + ".", "",
             "## Input", "",
             f"- `{inp['name']}`, {pre['color_order']}, {inp['resolution']} x {inp['resolution']} pixels "
             f"({pre['resize']}).",
             f"- Values {pre['value_scale']} (pixel / 255), then `(x - mean) / std` per channel with mean "
             f"`[{_floats(pre['mean'])}]` and std `[{_floats(pre['std'])}]`."]
    for fmt in ("tflite", "onnx"):
        if fmt in inp:
            d = inp[fmt]
            q = d.get("quantization")
            qs = f", quantised with scale {float(q['scale'])!r} and zero point {q['zero_point']}" if q else ""
            parts.append(f"- {fmt}: {d['dtype']} {d['shape']} ({d['layout']}){qs}.")
    out = meta["output"]
    parts += ["", f"Output `{out['name']}`: {out['meaning']}.", ""]
    if "model.tflite" in files:
        parts += ["## Android (Kotlin, LiteRT)", "", _kotlin(meta), "", "## Python (ai_edge_litert)", "",
                  _python_tflite(meta), ""]
    if "model.onnx" in files:
        parts += ["## Python (onnxruntime)", "", _python_onnx(meta), ""]
    lat = _latency_lines(meta)
    if lat:
        parts += ["## Latency", "", *lat, ""]
    parts += ["All numbers, checks and their provenance are in `metadata.json`.", ""]
    return "\n".join(parts)
