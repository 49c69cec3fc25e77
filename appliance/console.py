"""Progress for steps that take a while: nothing goes silent for long.

`working(text, say)` runs a background ticker while its block runs. On a
terminal it redraws one line with a spinner and the elapsed time every 0.2 s;
elsewhere (a log, CI) it prints a line saying the step is still running every
HEARTBEAT seconds. The block may change the text as it goes (`update`), e.g. a
byte counter or the current build step.
"""
import contextlib
import shutil
import sys
import threading
import time

HEARTBEAT = 10  # seconds between "still running" lines when the output is not a terminal
SPINNER = "|/-\\"


class Ticker:
    def __init__(self, text, out):
        self.text, self.out, self.tty = text, out, out.isatty()
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def update(self, text):
        self.text = text

    def elapsed(self):
        return time.monotonic() - self.started

    def _run(self):
        turn, last = 0, self.started
        while not self._stop.wait(0.2 if self.tty else 1):
            if self.tty:
                turn += 1
                line = f"{SPINNER[turn % 4]} {self.text} ({self.elapsed():.0f} s)"
                self.out.write("\r\033[K" + line[: shutil.get_terminal_size().columns - 1])
                self.out.flush()
            elif time.monotonic() - last >= HEARTBEAT:
                last = time.monotonic()
                self.out.write(f"  ... {self.text} ({self.elapsed():.0f} s)\n")
                self.out.flush()

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join()
        if self.tty:
            self.out.write("\r\033[K")
            self.out.flush()


@contextlib.contextmanager
def working(text, say=print, out=None):
    """Say `text`, keep showing that it runs until the block ends; yields the Ticker (for update)."""
    say(text)
    ticker = Ticker(text, out or sys.stdout).start()
    try:
        yield ticker
    finally:
        ticker.stop()
