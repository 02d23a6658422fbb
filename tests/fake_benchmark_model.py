"""Stand-in for TFLite's benchmark_model on the fake phone (written by tests/fake_phone.py).

It takes the real tool's flags, reads the --graph file like the real binary (failing the same way when it is
missing or not a TFLite flatbuffer), and prints its statistics in the real (2.14+) output format. A real .tflite
is really run with the LiteRT interpreter, honouring --num_threads, --use_xnnpack, --warmup_runs, --num_runs,
--warmup_min_secs, --min_secs and --max_secs as the real tool does (there is no GPU: --use_gpu runs on the CPU);
$FAKE_BENCHMARK_SLOWDOWN scales the timings of real models, as on a slower phone.
A placeholder from write_fake_tflite() gets synthetic numbers derived from its bytes, so transport tests need
no LiteRT. With $FAKE_BENCHMARK_ZYGOTE set, the whole run happens in a fork of a server that has LiteRT loaded
already, so the fake starts in milliseconds, as a native binary does, instead of a Python import's half second.
"""
import hashlib
import json
import os
import random
import signal
import socket
import sys
import time

FLAGS = {"graph": "", "num_threads": "-1", "warmup_runs": "1", "num_runs": "50", "use_gpu": "false",
         "use_xnnpack": "true", "min_secs": "1", "warmup_min_secs": "0.5", "max_secs": "150", "help": "false"}
PLACEHOLDER_TAG = b"NATDEPLOY-PLACEHOLDER-TFLITE"
SITE_PATHS = []  # filled in by write_fake_benchmark_model: where LiteRT lives (the script runs with -S)


def say(text=""):
    print("INFO: " + text if text else "", flush=True)


def err(text):
    print("ERROR: " + text, flush=True)


def shown(path):
    root = os.environ.get("FAKE_ADBD_ROOT", "")
    return path[len(root):] if root and path.startswith(root + "/") else path


def stat_line(values):
    if not values:
        return "count=0"
    if min(values) == max(values):
        return "count=%d curr=%d%s" % (len(values), values[-1], "(all same)" if len(values) > 1 else "")
    avg = sum(values) / len(values)
    std = int((sum((v - avg) ** 2 for v in values) / len(values)) ** 0.5)
    line = "count=%d first=%d curr=%d min=%d max=%d avg=%.6g std=%d" % (
        len(values), values[0], values[-1], min(values), max(values), avg, std)
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]
    return line + " p5=%d median=%d p95=%d" % (pick(0.05), pick(0.5), pick(0.95))


def preload():
    """Import what a real run needs (the zygote does this once, before it forks)."""
    for path in SITE_PATHS:
        if path not in sys.path:
            sys.path.append(path)
    import numpy  # noqa: F401
    from ai_edge_litert import interpreter  # noqa: F401


def timed_runs(fn, runs, min_secs, max_secs, threads):
    """Call fn at least `runs` times and for at least min_secs, but stop after max_secs: microseconds per call.

    A phone's cores are its own, but the fake's are the host's, which other jobs share. A one-thread run (XNNPACK
    runs it on the calling thread) is therefore timed on this thread's CPU clock, so that host load does not leak
    into a fake phone's speed as it cannot on a real phone; runs on more threads are timed by the wall clock.
    """
    slowdown = float(os.environ.get("FAKE_BENCHMARK_SLOWDOWN", "1"))  # read per run: the zygote forks this module
    clock = time.thread_time if threads == 1 else time.perf_counter
    values, start = [], time.perf_counter()
    while (len(values) < runs or time.perf_counter() - start < min_secs) and time.perf_counter() - start < max_secs:
        t0 = clock()
        fn()
        values.append(int((clock() - t0) * 1e6 * slowdown))
    return values


def real_model(data, threads, xnnpack):
    """(invoke, init microseconds) for a LiteRT interpreter on the model, or None after printing the error."""
    preload()
    import numpy as np
    from ai_edge_litert import interpreter as lite

    t0 = time.perf_counter()
    resolver = lite.OpResolverType.AUTO if xnnpack else lite.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        interp = lite.Interpreter(model_content=data, num_threads=threads if threads > 0 else None,
                                  experimental_op_resolver_type=resolver)
        interp.allocate_tensors()
    except (RuntimeError, ValueError) as exc:
        err("Failed to construct interpreter: %s" % (str(exc).splitlines() or [""])[0])
        err("Benchmarking failed.")
        return None
    rng = np.random.default_rng(0)
    for inp in interp.get_input_details():
        interp.set_tensor(inp["index"], rng.standard_normal(tuple(inp["shape"])).astype(inp["dtype"]))
    return interp.invoke, int((time.perf_counter() - t0) * 1e6)


def main(argv):
    flags, unknown = dict(FLAGS), []
    for arg in argv[1:]:
        key, _, value = arg[2:].partition("=")
        if arg.startswith("--") and key in flags:
            flags[key] = value or "true"
        else:
            unknown.append(arg)
    if flags["help"] == "true":
        err("usage: %s <flags>\nFlags:\n%s" % (argv[0], "\n".join("\t--%s=%s" % kv for kv in FLAGS.items())))
        err("Benchmarking failed.")
        return 1
    threads, warmup_runs, num_runs = int(flags["num_threads"]), int(flags["warmup_runs"]), int(flags["num_runs"])
    min_secs, warmup_min_secs, max_secs = (float(flags[k]) for k in ("min_secs", "warmup_min_secs", "max_secs"))
    gpu, graph = flags["use_gpu"] == "true", flags["graph"]
    say("STARTING!")
    say("Log parameter values verbosely: [0]")
    say("Min num runs: [%d]" % num_runs)
    say("Num threads: [%d]" % threads)
    say("Graph: [%s]" % shown(graph))
    say("Signature to run: []")
    say("#threads used for CPU inference: [%d]" % threads)
    if gpu:
        say("Use gpu: [1]")
    if unknown:
        print("WARNING: Unconsumed cmdline flags: " + " ".join(unknown), flush=True)
    if not graph:
        err("Please specify the name of your TF Lite input file with --graph")
        err("Benchmarking failed.")
        return 1
    try:
        with open(graph, "rb") as f:
            data = f.read()
    except OSError:
        err("Could not open '%s'." % shown(graph))
        err("Failed to mmap model %s" % shown(graph))
        err("Benchmarking failed.")
        return 1
    if data[4:8] != b"TFL3":
        err("Model provided has model identifier '%s', should be 'TFL3'" % data[4:8].decode("latin-1"))
        err("Failed to mmap model %s" % shown(graph))
        err("Benchmarking failed.")
        return 1
    say("Loaded model %s" % shown(graph))
    say("Initialized TensorFlow Lite runtime.")
    say("Created TensorFlow Lite delegate for GPU." if gpu else "Created TensorFlow Lite XNNPACK delegate for CPU.")
    say("The input model file size (MB): %g" % (len(data) / 1e6))
    if data[8:8 + len(PLACEHOLDER_TAG)] == PLACEHOLDER_TAG:
        rng = random.Random(hashlib.sha256(data).digest())
        base = (400 + len(data) / 64) / max(1, min(threads, 4)) ** 0.8 / (3 if gpu else 1)
        init_us = 900 + len(data) // 500
        warm_fn = lambda n: [int(base * (1.5 if i == 0 else 1 + 0.08 * rng.random())) for i in range(max(n, 0))]
        timed_fn = lambda n: [int(base * (1 + 0.05 * rng.random())) for _ in range(max(n, 0))]
    else:
        model = real_model(data, threads, flags["use_xnnpack"] == "true")
        if model is None:
            return 1
        invoke, init_us = model
        warm_fn = lambda n: timed_runs(invoke, n, warmup_min_secs, max_secs, threads)
        timed_fn = lambda n: timed_runs(invoke, n, min_secs, max_secs, threads)
    say("Initialized session in %.3fms." % (init_us / 1000))
    say("Running benchmark for at least %d iterations and at least %s seconds but terminate if exceeding %s "
        "seconds." % (warmup_runs, flags["warmup_min_secs"], flags["max_secs"]))
    warm = warm_fn(warmup_runs)
    say(stat_line(warm))
    print(flush=True)
    time.sleep(float(os.environ.get("FAKE_BENCHMARK_SLEEP_S", "0")))
    say("Running benchmark for at least %d iterations and at least %s seconds but terminate if exceeding %s "
        "seconds." % (num_runs, flags["min_secs"], flags["max_secs"]))
    if os.environ.get("FAKE_BENCHMARK_CRASH"):
        os.kill(os.getpid(), signal.SIGSEGV)  # dies like a native crash: the shell reports status 139
    timed = timed_fn(num_runs)
    say(stat_line(timed))
    print(flush=True)
    if timed:
        say("Inference timings in us: Init: %d, First inference: %d, Warmup (avg): %.6g, Inference (avg): %.6g" % (
            init_us, (warm or timed)[0], sum(warm) / len(warm) if warm else 0, sum(timed) / len(timed)))
    say("Memory footprint delta from the start of the tool (MB): init=%.6g overall=%.6g" % (
        len(data) / 1e6 + 2.5, len(data) / 1e6 + 6.1))
    return 0


def delegated(argv):
    """The exit status of this run done by the zygote, or None when there is none to ask."""
    path = os.environ.get("FAKE_BENCHMARK_ZYGOTE")
    if not path:
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        conn.connect(path)
    except OSError:
        return None
    request = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
    socket.send_fds(conn, [request], [1, 2])  # the run writes straight to our stdout and stderr
    reply = conn.recv(4096)  # if we are killed (timeout), the closed socket makes the zygote kill the run
    if not reply:
        err("the fake benchmark_model's zygote went away")
        return 1
    status = json.loads(reply)
    if "signal" in status:
        signal.signal(status["signal"], signal.SIG_DFL)
        os.kill(os.getpid(), status["signal"])  # die the same way, so the shell reports 128 + signal
    return status.get("exit", 1)


if __name__ == "__main__":
    code = delegated(sys.argv)
    sys.exit(main(sys.argv) if code is None else code)
