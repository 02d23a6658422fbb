"""The fake benchmark_model's fork server (started by tests/adb_daemon.py): imports LiteRT once, then forks a child
per run. Single-threaded on purpose (forking a threaded process is unsafe). Each request is served by a handler
fork that runs the model in a second fork, reports its exit status, and kills it when the requesting fake binary
dies (e.g. on a timeout).

    python fake_zygote.py SOCKET_PATH FAKE_BENCHMARK_MODEL_PATH PARENT_PID
"""
import json, os, select, signal, socket, sys, traceback

sock_path, source, parent = sys.argv[1], sys.argv[2], int(sys.argv[3])
fake = {"__name__": "fake_benchmark_model"}
exec(compile(open(source).read(), source, "exec"), fake)
fake["preload"]()


def serve(conn):
    message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 2)
    request = json.loads(message)
    pid = os.fork()
    if pid == 0:
        try:
            conn.close()
            os.dup2(fds[0], 1)
            os.dup2(fds[1], 2)
            os.chdir(request["cwd"])
            os.environ.clear()
            os.environ.update(request["env"])
            code = fake["main"](request["argv"])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code or 0)
    for fd in fds:
        os.close(fd)
    # pidfd (Linux 5.3+) wakes select when the run ends; without it, poll.
    child = os.pidfd_open(pid) if hasattr(os, "pidfd_open") else None
    while True:
        ready, _, _ = select.select([conn] + ([child] if child is not None else []), [], [],
                                    None if child is not None else 0.005)
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            reply = ({"signal": os.WTERMSIG(status)} if os.WIFSIGNALED(status) else {"exit": os.WEXITSTATUS(status)})
            conn.send(json.dumps(reply).encode())
            return
        if conn in ready and not conn.recv(16):  # the fake binary is gone: its run goes too
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return


server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
server.bind(sock_path + ".tmp")
server.listen(16)
os.rename(sock_path + ".tmp", sock_path)  # appears only once it accepts
while os.getppid() == parent:  # ends with the test process at the latest
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                break
        except ChildProcessError:
            break
    if not select.select([server], [], [], 0.2)[0]:
        continue
    conn, _ = server.accept()
    if os.fork() == 0:
        server.close()
        try:
            serve(conn)
        finally:
            os._exit(0)
    conn.close()
