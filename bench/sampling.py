"""Sample a process tree's resident memory over time, with a progress probe."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil

logger = logging.getLogger(__name__)

#: Default sampling period, seconds.
DEFAULT_INTERVAL_S = 0.2
_MB = 1024 * 1024


@dataclass(frozen=True)
class Sample:
    """One observation: when, the tree's RSS (MB) and CPU time (s), and the probe's value."""

    t: float
    rss_mb: float
    cpu_s: float
    progress: int


def tree_usage(pid: int) -> tuple[float, float]:
    """(RSS in MB, user+system CPU seconds) of ``pid`` and its live descendants."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0, 0.0
    rss = 0
    cpu_s = 0.0
    for process in processes:
        try:
            with process.oneshot():
                rss += process.memory_info().rss
                times = process.cpu_times()
                cpu_s += times.user + times.system
        except psutil.Error:
            continue
    return rss / _MB, cpu_s


def cpu_seconds(pid: int) -> float:
    """User+system CPU seconds of one process (0 if it is gone)."""
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


@dataclass
class TreeSampler:
    """A thread that samples ``tree_rss_mb(pid)`` and ``probe()`` every ``interval_s``.

    ``probe`` reports progress (records delivered so far); ``None`` skips it.
    """

    pid: int
    probe: Callable[[], int] | None = None
    interval_s: float = DEFAULT_INTERVAL_S
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> TreeSampler:
        """Take a first sample now, then keep sampling in the background."""
        self.sample_now()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def sample_now(self) -> Sample:
        """Take one sample immediately (also appended)."""
        progress = 0
        if self.probe is not None:
            try:
                progress = self.probe()
            except Exception as exc:  # the stub may be busy; keep sampling memory
                logger.debug("probe failed: %s", exc)
                progress = self.samples[-1].progress if self.samples else 0
        rss_mb, cpu_s = tree_usage(self.pid)
        sample = Sample(time.time(), rss_mb, cpu_s, progress)
        self.samples.append(sample)
        return sample

    def stop(self) -> list[Sample]:
        """Stop the thread, take a last sample, return all samples."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.sample_now()
        return self.samples

    @property
    def cpu_used_s(self) -> float:
        """CPU seconds the tree used between the first and the last sample."""
        if len(self.samples) < 2:
            return 0.0
        return self.samples[-1].cpu_s - self.samples[0].cpu_s

    @property
    def peak_mb(self) -> float:
        """The highest RSS seen so far, MB."""
        return max((s.rss_mb for s in self.samples), default=0.0)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample_now()


def rss_at_fractions(
    samples: list[Sample], total: int, fractions: tuple[float, ...]
) -> dict[float, float]:
    """RSS at the first sample whose progress reached each fraction of ``total``."""
    result: dict[float, float] = {}
    for fraction in fractions:
        goal = fraction * total
        hit = next((s for s in samples if s.progress >= goal), None)
        if hit is not None:
            result[fraction] = hit.rss_mb
    return result
