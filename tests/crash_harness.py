"""Kill a ``sae-gated`` child process with SIGKILL at points chosen from its own progress.

A child's progress is what it shows from outside: lines on its stderr, paths that appear under
the folders it writes (staging folders and renames included), and requests a LocalHub answers.
A run without a kill records when each event came; kill point ``i`` of ``n`` aims at a random
moment of the ``i``-th ``n``-th of that run and is taken as "the last event before it, then the
rest of the way as a delay", so the points spread over the whole run, start-up included, and
each is anchored on the child's own progress. No product code is involved.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

SCRIPT = Path(sys.executable).with_name("sae-gated")
POLL_S = 0.002


def crash_points(default: int) -> int:
    """Kill points per verb: SAE_GATED_CRASH_POINTS, else ``default`` (the CI set)."""
    return int(os.environ.get("SAE_GATED_CRASH_POINTS", default))


@dataclass
class Watch:
    """The events a child shows: stderr lines, paths seen under ``folders``, ``requests()``."""

    folders: list[Path]
    requests: Callable[[], int] = lambda: 0
    seen: set[str] = field(default_factory=set)

    def count(self, stderr: Path) -> int:
        """Events so far (paths are counted once each, the first time they are seen)."""
        for folder in self.folders:
            for root, dirs, files in os.walk(folder):
                self.seen.update(os.path.join(root, name) for name in dirs + files)
        lines = stderr.read_bytes().count(b"\n") + stderr.read_bytes().count(b"\r")
        return lines + len(self.seen) + self.requests()


@dataclass
class Outcome:
    """One run of the child: whether the kill landed, events seen, seconds, its stderr."""

    killed: bool
    events: int
    seconds: float
    times: list[float]
    stderr: str
    returncode: int | None


def run_child(
    args: list[str],
    watch: Watch,
    log: Path,
    env: dict[str, str] | None = None,
    kill_at: int | None = None,
    delay: float = 0.0,
    timeout: float = 600,
) -> Outcome:
    """Run ``sae-gated ARGS``; with ``kill_at``, SIGKILL it ``delay`` s after event ``kill_at``."""
    start = time.monotonic()
    with log.open("wb") as err:
        child = subprocess.Popen(
            [str(SCRIPT), *args], stdout=subprocess.DEVNULL, stderr=err, env=env
        )
    killed, events, fired_at, times = False, 0, None, []
    while child.poll() is None:
        events = watch.count(log)
        now = time.monotonic()
        times += [now - start] * (events - len(times))
        if kill_at is not None and fired_at is None and events >= kill_at:
            fired_at = now
        if fired_at is not None and now - fired_at >= delay:
            child.send_signal(signal.SIGKILL)
            killed = True
            break
        if now - start > timeout:
            child.kill()
            raise TimeoutError(f"sae-gated {' '.join(args)} ran past {timeout} s")
        time.sleep(POLL_S)
    child.wait()
    if not killed:
        events = watch.count(log)
    text = log.read_text(encoding="utf-8", errors="replace")
    seconds = time.monotonic() - start
    return Outcome(killed, events, seconds, times, text, child.returncode)


def schedule(n: int, reference: Outcome, seed: int) -> list[tuple[int, float]]:
    """``n`` (event, delay) kill points spread over the run ``reference``."""
    rng = random.Random(seed)
    points = []
    for i in range(n):
        moment = (i + rng.random()) / n * reference.seconds
        before = [t for t in reference.times if t <= moment]
        points.append((len(before), moment - (before[-1] if before else 0.0)))
    return points


def visible(root: Path) -> Iterable[Path]:
    """Files under ``root`` outside hidden (staging, lock) names."""
    for path in sorted(root.rglob("*")):
        parts = path.relative_to(root).parts
        if path.is_file() and not any(part.startswith(".") for part in parts):
            yield path


def check_untorn(root: Path) -> None:
    """Every visible JSON, YAML and safetensors file under ``root`` reads whole; every visible
    folder holding a ``cfg.json`` is a whole, valid SAE folder."""
    from safetensors.torch import load_file

    from sae_gated_plugin.arch.artifacts import validate_sae_folder

    for path in visible(root):
        if path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".yaml":
            yaml.safe_load(path.read_text(encoding="utf-8"))
        elif path.suffix == ".safetensors":
            load_file(path)
        if path.name == "cfg.json":
            validate_sae_folder(path.parent)
