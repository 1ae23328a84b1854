"""Worker processes and the alternating rounds: how every contender is timed.

Every contender lives in its own worker process, loaded once (the workers of a group
load side by side, then wait), and answers one command at a time. The rounds then
alternate: round r times every (contender, batch) once, starting at a place rotated by
r (:func:`schedule`), before round r + 1 begins, so that machine drift and other load
hit all contenders alike; the spread over rounds shows how much there was.

A contender whose loader raises, or whose worker fails a command or dies, is dropped
from the rest of the run with its error recorded (``Bench.errors``); the others go on.

Memory is each worker's VmHWM (the most resident memory its own address space held),
not ``ru_maxrss``, which a spawned child inherits from its parent's peak on Linux.
"""

import concurrent.futures
import contextlib
import multiprocessing
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from metaformer_bench.settings import SEED, SETTLE_SECONDS


def _redirect_output(log_path):
    """Sends this process's stdout and stderr (C++ logs included) to a log file."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _memory():
    """This process's resident memory now and at its peak (VmRSS, VmHWM), in MiB."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024
    return {"rss_mib": fields["VmRSS"], "peak_rss_mib": fields["VmHWM"]}


def _reset_peak():
    """Resets VmHWM to the current RSS; returns the peak before, and whether it worked."""
    before = _memory()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return {**before, "reset": True}
    except OSError:
        return {**before, "reset": False}


def _time_calls(fn, seconds, warmup):
    """``warmup`` untimed calls, then calls back to back for at least ``seconds``.

    Returns the calls, their wall time and the CPU time this process spent meanwhile
    (CPU / wall is the number of cores it kept busy, spinning included).
    """
    for _ in range(warmup):
        fn()
    calls, start, cpu = 0, time.perf_counter(), time.process_time()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return {"calls": calls, "seconds": elapsed, "cpu_seconds": time.process_time() - cpu}


class _Inputs:
    """The same random pixels (and labels) in every worker, per size and batch."""

    def __init__(self):
        self._cache = {}

    def __call__(self, size, batch):
        if (size, batch) not in self._cache:
            rng = np.random.default_rng(SEED)
            images = rng.uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
            labels = rng.integers(0, 1000, batch, dtype=np.int64)
            self._cache[size, batch] = images, labels
        return self._cache[size, batch]


def _serve(conn, contenders, settings, log_path):
    """A worker's life: load its contenders, then answer commands until told to stop."""
    _redirect_output(log_path)
    by_name = {c.name: c for c in contenders}
    functions, errors = {}, {}
    for contender in contenders:
        try:
            functions[contender.name] = contender.load(settings, **contender.options)
        except Exception:
            errors[contender.name] = traceback.format_exc()
            print(errors[contender.name], file=sys.stderr, flush=True)
    conn.send({"errors": errors, "memory": _memory()})
    inputs = _Inputs()

    def call(name, batch):
        images, labels = inputs(by_name[name].size, batch)
        if by_name[name].training:
            return lambda: functions[name](images, labels)
        return lambda: functions[name](images)

    commands = {
        "time": lambda name, batch, seconds, warmup: _time_calls(
            call(name, batch), seconds, warmup
        ),
        "warm_up": lambda name, batch: call(name, batch)(),
        "logits": lambda name, images, chunk: np.concatenate(
            [functions[name](images[i : i + chunk]) for i in range(0, len(images), chunk)]
        ),
        "memory": _memory,
        "reset_peak": _reset_peak,
    }
    while True:
        command, args = conn.recv()
        if command == "stop":
            break
        try:
            conn.send(("ok", commands[command](**args)))
        except Exception:
            message = traceback.format_exc()
            print(message, file=sys.stderr, flush=True)
            conn.send(("error", message))


class WorkerError(RuntimeError):
    pass


def last_line(message):
    """The last line of a traceback: the exception and its message."""
    lines = message.strip().splitlines()
    return lines[-1] if lines else message


class Worker:
    """Handle on a worker process that holds ``contenders``. The process starts at
    once; :meth:`ready` waits until it has loaded them."""

    def __init__(self, contenders, settings, log_path):
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self.log_path = log_path
        self._process = context.Process(
            target=_serve, args=(child, contenders, settings, str(log_path)), daemon=True
        )
        self._process.start()
        child.close()
        self.errors, self.loaded_memory = {}, None

    def ready(self):
        """Waits for the load; sets ``errors`` (name -> traceback) and ``loaded_memory``."""
        ready = self._receive()
        self.errors, self.loaded_memory = ready["errors"], ready["memory"]
        return self

    def _receive(self):
        try:
            return self._conn.recv()
        except EOFError:
            raise WorkerError(f"the worker died; see {self.log_path}") from None

    def __call__(self, command, **args):
        self._conn.send((command, args))
        status, value = self._receive()
        if status == "error":
            raise WorkerError(last_line(value))
        return value

    def stop(self):
        """Tells the worker to exit, without waiting for it."""
        if self._process.is_alive():
            with contextlib.suppress(OSError):  # the pipe of a dead worker
                self._conn.send(("stop", {}))

    def close(self):
        self.stop()
        self._process.join(30)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join()


def call_in_process(log_path, fn, *args):
    """``fn(*args)`` in a fresh process (so that what it loads is freed after)."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        1, mp_context=context, initializer=_redirect_output, initargs=(str(log_path),)
    ) as pool:
        return pool.submit(fn, *args).result()


def schedule(jobs, rounds):
    """The order of the alternating rounds: round r runs every job once, starting at
    place ``r * len(jobs) // rounds``, so that the starts spread over the list."""
    order = []
    for r in range(rounds):
        shift = (r * len(jobs)) // rounds
        order.append(jobs[shift:] + jobs[:shift])
    return order


def summary(timings, batch):
    """images/s of each round's measurement: median, slowest, fastest, all."""
    speeds = [batch * t["calls"] / t["seconds"] for t in timings]
    return {
        "median": float(np.median(speeds)),
        "min": float(np.min(speeds)),
        "max": float(np.max(speeds)),
        "rounds": [round(v, 3) for v in speeds],
        "cores_busy_median": float(np.median([t["cpu_seconds"] / t["seconds"] for t in timings])),
    }


class Bench:
    """Workers for groups of contenders (one worker per group), and the alternating
    rounds over them."""

    def __init__(self, groups, settings, log_dir, log):
        self.log = log
        self.workers, self.errors, self.loaded_memory = {}, {}, {}
        names = ", ".join(c.name for group in groups for c in group)
        log(f"loading {names}")
        started = [
            (group, Worker(group, settings, Path(log_dir) / f"{group[0].name}.log"))
            for group in groups
        ]
        self._all = [worker for _, worker in started]
        for group, worker in started:
            try:
                worker.ready()
            except WorkerError as error:
                self.errors.update({c.name: str(error) for c in group})
                log(f"  {', '.join(c.name for c in group)} failed to load: {error}")
                continue
            for contender in group:
                if contender.name in worker.errors:
                    message = last_line(worker.errors[contender.name])
                    self.errors[contender.name] = message
                    log(f"  {contender.name} failed to load: {message}")
                else:
                    self.workers[contender.name] = worker
                    self.loaded_memory[contender.name] = worker.loaded_memory
        self.contenders = [c for group in groups for c in group if c.name in self.workers]

    def _call(self, target, command, **args):
        """One command to ``target``'s worker; a failure drops ``target`` from the rest."""
        try:
            return self.workers[target](command, **args)
        except WorkerError as error:
            self.errors[target] = str(error)
            self.log(f"  {target} failed: {error}")
            del self.workers[target]
            self.contenders = [c for c in self.contenders if c.name != target]
            return None

    def warm_up(self, batches):
        for contender in list(self.contenders):
            for batch in batches:
                if contender.name in self.workers:
                    self._call(contender.name, "warm_up", name=contender.name, batch=batch)

    def logits(self, images, chunk):
        return {
            c.name: self._call(c.name, "logits", name=c.name, images=images, chunk=chunk)
            for c in list(self.contenders)
        }

    def reset_peaks(self):
        return {c.name: self._call(c.name, "reset_peak") for c in list(self.contenders)}

    def memory(self):
        return {c.name: self._call(c.name, "memory") for c in list(self.contenders)}

    def rounds(self, batches, rounds, seconds, warmup):
        """Round r times every (contender, batch) once, from a start rotated by r."""
        jobs = [(c.name, batch) for batch in batches for c in self.contenders]
        timings = {job: [] for job in jobs}
        for r, order in enumerate(schedule(jobs, rounds)):
            for name, batch in order:
                if name not in self.workers:
                    continue
                timing = self._call(
                    name, "time", name=name, batch=batch, seconds=seconds, warmup=warmup
                )
                if timing is not None:
                    timings[name, batch].append(timing)
                time.sleep(SETTLE_SECONDS)
            line = ", ".join(
                f"{n} b{b} {b * t[-1]['calls'] / t[-1]['seconds']:.2f}"
                for (n, b), t in timings.items()
                if t
            )
            self.log(f"  round {r + 1}/{rounds} img/s: {line}")
        return {(n, b): summary(t, b) for (n, b), t in timings.items() if t}

    def close(self):
        for worker in self._all:  # they exit side by side
            worker.stop()
        for worker in self._all:
            worker.close()
