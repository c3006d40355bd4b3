"""S3's GETs as AWS answers them: each after a round trip (tens of milliseconds to its first byte, where moto
answers at once, which made one copy after another look fast), and the most answered at once, which a test reads
to see how many a client keeps in flight."""

import contextlib
import threading
import time
from collections.abc import Iterator


class S3Reads:
    def __init__(self) -> None:
        self.round_trip_s = 0.0
        self._lock = threading.Lock()
        self._in_flight = 0
        self.most_at_once = 0

    @contextlib.contextmanager
    def answering(self) -> Iterator[None]:
        with self._lock:
            self._in_flight += 1
            self.most_at_once = max(self.most_at_once, self._in_flight)
        try:
            time.sleep(self.round_trip_s)
            yield
        finally:
            with self._lock:
                self._in_flight -= 1

    def reset(self) -> None:
        with self._lock:
            self.round_trip_s, self.most_at_once = 0.0, 0
