"""Fault injection for tests/reliability: put this folder on PYTHONPATH and describe the fault in
HARNESS_TEST_FAULT (JSON). Python imports sitecustomize in every process it starts (the harness
CLI, torchrun, each training worker); the hook acts only in the role the fault names, at the n-th
matching event, and never touches production code: it wraps os.replace / os.rename and
GPTModel.forward (which computes the loss from the targets) and calls straight through to them.

  {"role": "parent" | "worker",     # the harness process, or a torchrun worker
   "point": "runs:before",          # see POINTS below; "<event>:before" or "<event>:after"
   "nth": 1,                        # fire at the n-th matching event in that process
   "run": "qkv_bias-s0-",           # worker: only in the run whose spec path contains this
   "rank": 0,                       # worker: only this RANK
   "host": "hnode2",                # worker: only on the machine of this hostname (a node of a test cluster)
   "action": "killpg",              # killpg: SIGKILL the sweep's process group (a worker carries on,
                                    # an orphan); killall: the group and this worker; kill_self; stop_self;
                                    # enospc / erofs: make this and every later matching write fail;
                                    # sleep: wait "seconds" (a slow disk), then carry on
   "once": "/path/marker",          # fire only if this file does not exist yet (then create it)
   "log": "/path/faults.jsonl"}     # one JSON line per fault fired: point, action, pid, time
Events: parent: spec, journal, curves, runs, manifest (os.replace onto that file);
        worker: ckpt-meta (meta.json into checkpoint.tmp), ckpt-swap (checkpoint -> checkpoint.old),
        ckpt-commit (checkpoint.tmp -> checkpoint), result (result.json),
        train-step (a training forward's loss), eval (an evaluation batch's per-token losses).
"""

import errno
import json
import os
import signal
import socket
import threading
import time

_SPEC = os.environ.get("HARNESS_TEST_FAULT")


def _cmdline():
    try:
        with open("/proc/self/cmdline", "rb") as f:
            return f.read().decode(errors="replace").split("\0")
    except OSError:
        return []


def _role(args):
    if "harness.training.worker" in args and "LOCAL_RANK" in os.environ:
        return "worker"
    if "torch.distributed.run" in args:
        return "torchrun"
    if "harness" in args and "-m" in args:
        return "parent"
    return None


def _install(spec):
    args = _cmdline()
    role = _role(args)
    if role != spec.get("role", "parent"):
        return
    if role == "worker":
        if spec.get("run") and not any(spec["run"] in a for a in args):
            return
        if "rank" in spec and int(os.environ.get("RANK", "0")) != int(spec["rank"]):
            return
        if "host" in spec and socket.gethostname() != spec["host"]:
            return
    event, _, phase = spec["point"].partition(":")
    phase = phase or "before"
    state = {"count": 0, "fired": False}
    nth = int(spec.get("nth", 1))
    action = spec.get("action", "killpg")

    def log():
        if spec.get("log"):
            with open(spec["log"], "a") as f:
                f.write(json.dumps({"point": spec["point"], "action": action, "pid": os.getpid(),
                                    "role": role, "time": time.time(), "nth": nth}) + "\n")

    def fire():
        if action in ("enospc", "erofs"):
            if not state["fired"]:
                log()
            state["fired"] = True
            code = errno.ENOSPC if action == "enospc" else errno.EROFS
            raise OSError(code, os.strerror(code))
        if state["fired"]:
            return
        state["fired"] = True
        if spec.get("once"):  # at most once across processes (a retried run must not meet it again)
            try:
                os.close(os.open(spec["once"], os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return
        log()
        if action in ("killpg", "killall"):
            group = os.getpgrp() if role == "parent" else os.getpgid(os.getppid())
            os.killpg(group, signal.SIGKILL)
            if action == "killall":  # the whole machine goes down: this worker too
                os.kill(os.getpid(), signal.SIGKILL)
            if role == "worker":  # the worker lives in its own session: it stays, an orphan
                return
        elif action == "kill_self":
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "stop_self":
            os.kill(os.getpid(), signal.SIGSTOP)
        elif action == "sleep":
            time.sleep(float(spec.get("seconds", 1.0)))
            return
        time.sleep(60)  # the kill is on its way

    def hit(name):
        if name != event:
            return False
        state["count"] += 1
        return state["count"] >= nth if action in ("enospc", "erofs") else state["count"] == nth

    def classify(src, dst):
        src, dst = str(src), str(dst)
        base = os.path.basename(dst)
        if role == "parent":
            if os.path.basename(os.path.dirname(dst)) == "attempts":
                return "journal"
            return {"spec.json": "spec", "curves.parquet": "curves", "runs.parquet": "runs",
                    "manifest.json": "manifest"}.get(base)
        if base == "meta.json" and os.path.basename(os.path.dirname(dst)) == "checkpoint.tmp":
            return "ckpt-meta"
        if base == "checkpoint.old" and os.path.basename(src) == "checkpoint":
            return "ckpt-swap"
        if base == "checkpoint" and os.path.basename(src) == "checkpoint.tmp":
            return "ckpt-commit"
        if base == "result.json":
            return "result"
        return None

    def wrap(real):
        def wrapped(src, dst, *a, **kw):
            name = classify(src, dst)
            if name and phase == "before" and hit(name):
                fire()
            out = real(src, dst, *a, **kw)
            if name and phase == "after" and hit(name):
                fire()
            return out
        return wrapped

    os.replace = wrap(os.replace)
    os.rename = wrap(os.rename)

    if role == "worker" and event in ("train-step", "eval"):
        def patch_loss():  # GPTModel computes its own loss from the targets (training: the mean; evaluation: per token)
            import sys
            for _ in range(200000):
                gpt = sys.modules.get("harness.model.gpt")
                if gpt is not None and hasattr(gpt, "GPTModel"):
                    real = gpt.GPTModel.forward

                    def forward(self, idx, targets=None, reduction="mean"):
                        name = None if targets is None else "eval" if reduction == "none" else "train-step"
                        if name and phase == "before" and hit(name):
                            fire()
                        out = real(self, idx, targets, reduction)
                        if name and phase == "after" and hit(name):
                            fire()
                        return out

                    gpt.GPTModel.forward = forward
                    return
                time.sleep(0.002)

        threading.Thread(target=patch_loss, daemon=True).start()

if _SPEC:
    try:
        _install(json.loads(_SPEC))
    except Exception as _err:  # a broken fault description must be loud, not silently ignored
        import sys
        sys.stderr.write(f"faulthook: {_err!r}\n")
        raise
