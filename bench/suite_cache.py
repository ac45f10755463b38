"""The build cache shared by the benchmark suites: build into a temporary folder, then move it
into place atomically, so a crashed or concurrent build never leaves a half-written suite."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path


def is_complete(root: Path) -> bool:
    """Whether `root` holds a suite.json and every file it lists."""
    meta = root / "suite.json"
    if not meta.is_file():
        return False
    info = json.loads(meta.read_text())
    return all((root / f).is_file() for f in info["files"])


def cached_build(root: Path, build: Callable[[Path], None], label: str, verbose: bool) -> Path:
    """`root` when complete; else run `build(tmp)` (which writes a fresh folder) and move it to
    `root`. A damaged earlier build is replaced; a concurrent finished build is kept."""
    if is_complete(root):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".tmp-{root.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    start = time.perf_counter()
    build(tmp)
    if verbose:
        print(f"[{label}] built in {time.perf_counter() - start:.1f}s -> {root}", flush=True)
    if root.exists() and not is_complete(root):
        shutil.rmtree(root, ignore_errors=True)
    try:
        os.replace(tmp, root)
    except OSError:  # a concurrent build finished first; keep its files
        shutil.rmtree(tmp, ignore_errors=True)
    return root
