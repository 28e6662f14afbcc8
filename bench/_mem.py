"""Memory probes shared by the training benches: current and peak resident set size of this process, sampled."""
import os, resource, threading, time

def rss() -> int:
    "Resident set size of this process now, in bytes (Linux /proc)."
    with open('/proc/self/statm') as f: return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')

def peak_rss() -> int:
    "Peak resident set size of this process so far, in bytes (getrusage; kilobytes on Linux)."
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

class RSSPeak:
    "Highest RSS seen while the block runs (sampled every `every` s, plus at exit), above the RSS at entry."
    def __init__(self, every=0.005): self.every, self.peak, self.base = every, 0, 0
    def _watch(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss()); time.sleep(self.every)
    def __enter__(self):
        self.base = self.peak = rss(); self._stop = threading.Event()
        self._t = threading.Thread(target=self._watch, daemon=True); self._t.start(); return self
    def __exit__(self, *exc):
        self._stop.set(); self._t.join(); self.peak = max(self.peak, rss())
    @property
    def delta(self) -> int: return self.peak - self.base
