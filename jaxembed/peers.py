"""Lost peers in a multi-process run: one line and a bounded exit, not a hang or an abort.

When a process of a multi-process run dies (kill -9, a preempted host), the others block in
their next collective; JAX's coordination service notices only after its heartbeat timeout
(100 s) and then aborts each survivor with a C++ stack dump. Here every process publishes a
heartbeat in the coordination service's key-value store once a second from a daemon thread
(which runs while the main thread waits in a collective or compiles), and watches the
others'. A peer whose heartbeat stops for `timeout_s`, or a coordinator that stops
answering, ends this process with one line naming the lost process and the checkpoint a
restart resumes from, and exit status 1. A process that finishes, or stops on an error of its
own, says so in the store first, so its peers neither wait for it nor call it lost.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

PREFIX = "jaxembed/peers"


class PeerWatch:
    def __init__(
        self,
        client: Any,
        process_id: int,
        num_processes: int,
        timeout_s: float,
        resume_point: Callable[[], str],
        interval_s: float = 1.0,
    ) -> None:
        self.client, self.process_id, self.num_processes = client, process_id, num_processes
        self.timeout_s, self.interval_s, self.resume_point = timeout_s, interval_s, resume_point
        self._stop = threading.Event()
        self._seen: dict[int, tuple[str, float]] = {}  # peer -> (last beat, when it changed)
        self._ended: set[int] = set()
        self._settling = False
        self._thread = threading.Thread(target=self._run, name="jaxembed-peer-watch", daemon=True)

    def start(self) -> PeerWatch:
        self._thread.start()
        return self

    def settle(self) -> None:
        """After this process failed: wait until every peer has either ended or shown a
        heartbeat since, so that an error caused by a lost peer (a collective that failed
        when its socket closed) is reported as the lost peer, by the watch thread, instead."""
        self._settling = True
        started = time.monotonic()
        while time.monotonic() - started < self.timeout_s + 5:
            pending = [
                peer
                for peer in range(self.num_processes)
                if peer != self.process_id
                and peer not in self._ended
                and self._seen.get(peer, ("", 0.0))[1] <= started
            ]
            if not pending:
                return
            time.sleep(0.2)

    def finish(self, outcome: str = "finished") -> None:
        """Tell the peers this process is done (or why it stopped), then stop watching."""
        self._stop.set()
        try:
            self.client.key_value_set(f"{PREFIX}/ended/{self.process_id}", outcome, True)
        except Exception:  # the coordinator is gone already: nobody is left to tell
            pass
        self._thread.join(timeout=5)

    def _run(self) -> None:
        beats, seen = 0, self._seen
        peers = [i for i in range(self.num_processes) if i != self.process_id]
        while not self._stop.wait(self.interval_s):
            beats += 1
            now = time.monotonic()
            try:
                self.client.key_value_set(f"{PREFIX}/alive/{self.process_id}", str(beats), True)
                # Two reads a second, whatever the process count (a pod has hundreds).
                ended, alive = self._read("ended"), self._read("alive")
            except Exception as e:  # the store itself is unreachable: process 0 is gone
                if self._stop.is_set():
                    return
                if self.process_id != 0:
                    self._lost(
                        f"process 0 (the coordinator) of {self.num_processes} stopped "
                        f"responding ({type(e).__name__})"
                    )
                continue
            for peer in list(peers):
                if peer in ended:
                    if ended[peer] != "finished" and not self._settling:
                        self._lost(f"process {peer} stopped: {ended[peer]}")
                    self._ended.add(peer)
                    peers.remove(peer)
                    continue
                beat = alive.get(peer, "")
                if peer not in seen or seen[peer][0] != beat:
                    seen[peer] = (beat, now)
                elif now - seen[peer][1] > self.timeout_s:
                    self._lost(
                        f"process {peer} of {self.num_processes} stopped responding "
                        f"(no heartbeat for {self.timeout_s:.0f} s)"
                    )

    def _read(self, kind: str) -> dict[int, str]:
        """Every process's entry under `kind` ("alive" or "ended"), in one request."""
        entries = self.client.key_value_dir_get(f"{PREFIX}/{kind}/")
        return {int(key.rstrip("/").rsplit("/", 1)[-1]): value for key, value in entries}

    def _lost(self, what: str) -> None:
        try:
            resume = self.resume_point()
        except Exception:
            resume = "the last complete checkpoint"
        sys.stderr.write(
            f"\njaxembed train: error: {what}; this process (process {self.process_id}) "
            f"stops too; the last complete checkpoint is {resume}: run the same command on "
            "every process to resume\n"
        )
        sys.stderr.flush()
        # The main thread may be blocked in a collective that will never complete.
        os._exit(1)


def watch_peers(timeout_s: float, resume_point: Callable[[], str]) -> PeerWatch | None:
    """Start watching this run's other processes (None for a single process)."""
    import jax
    from jax._src import distributed

    client = distributed.global_state.client
    if client is None or jax.process_count() == 1:
        return None
    return PeerWatch(
        client, jax.process_index(), jax.process_count(), timeout_s, resume_point
    ).start()
