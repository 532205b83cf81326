"""Transfer rates of a link: bytes per second over the last few seconds, from periodic samples."""

from collections import deque

WINDOW = 5  # seconds the rates average over


class Meter:
    """Samples (time, bytes in, bytes out) once a second; rates over the window they span."""

    def __init__(self, window: int = WINDOW) -> None:
        self._samples: deque[tuple[float, int, int]] = deque(maxlen=window + 1)

    def sample(self, now: float, bytes_in: int, bytes_out: int) -> None:
        """Record the link's byte counters at `now`."""
        self._samples.append((now, bytes_in, bytes_out))

    def rates(self) -> tuple[float, float]:
        """(in, out) bytes per second across the samples kept; zero before two samples."""
        if len(self._samples) < 2:
            return 0.0, 0.0
        (t0, in0, out0), (t1, in1, out1) = self._samples[0], self._samples[-1]
        span = max(t1 - t0, 1e-6)
        return (in1 - in0) / span, (out1 - out0) / span
