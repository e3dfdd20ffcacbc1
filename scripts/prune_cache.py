#!/usr/bin/env python3
"""Keeps the build cache outside the clone bounded (CARGO_TARGET_DIR, ~/.cache/dialer/target).

Every clone path builds its own copies of the workspace's crates and test binaries, and every
change leaves the previous test binaries behind: over a few days the cache filled this machine's
disk and the servers the tests start could no longer write (Cassandra "did not start"). This
removes, in each profile's `deps/`:
  * artifacts whose main source file no longer exists (clones since deleted);
  * artifacts superseded by a newer build of the same source file (same name, same path);
and in `incremental/` every session but the newest per crate, and crates untouched for 3 days.
Dependencies from the registry are left alone: their several feature sets are all in use.

Usage: scripts/prune_cache.py [TARGET_DIR]     (prints what it freed)
"""
import collections
import os
import shutil
import sys
import time

ARTIFACT_EXT = ("", ".rlib", ".rmeta", ".so")


def main_source(dep_file):
    """The first source file a rustc `.d` file lists, or None."""
    try:
        with open(dep_file) as f:
            line = f.readline()
    except OSError:
        return None
    parts = line.split(":", 1)
    if len(parts) < 2 or not parts[1].split():
        return None
    return parts[1].split()[0]


def local(path):
    """Whether a source path is ours (not the registry's or the toolchain's)."""
    return "/.cargo/registry/" not in path and "/.rustup/" not in path and "/rustlib/" not in path


def prune_deps(deps):
    groups = collections.defaultdict(list)
    for entry in os.scandir(deps):
        stem, ext = os.path.splitext(entry.name)
        if ext != ".d" or not entry.is_file():
            continue
        src = main_source(entry.path)
        if src is None or not local(src):
            continue
        name = stem.rpartition("-")[0]
        groups[(name, src)].append((entry.stat().st_mtime, stem))
    doomed = []
    for (_, src), builds in groups.items():
        builds.sort()
        stale = builds if not os.path.exists(src) else builds[:-1]
        doomed += [stem for _, stem in stale]
    freed = 0
    for stem in doomed:
        for ext in ARTIFACT_EXT + (".d",):
            for prefix in ("", "lib"):
                p = os.path.join(deps, prefix + stem + ext)
                if os.path.isfile(p):
                    freed += os.path.getsize(p)
                    os.remove(p)
    return freed


def size(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def prune_incremental(inc):
    freed, old = 0, time.time() - 3 * 86400
    for crate in os.scandir(inc):
        if not crate.is_dir():
            continue
        sessions = sorted((s.stat().st_mtime, s.path) for s in os.scandir(crate.path) if s.is_dir())
        stale = sessions if (not sessions or sessions[-1][0] < old) else sessions[:-1]
        for _, path in stale:
            freed += size(path)
            shutil.rmtree(path, ignore_errors=True)
        if not any(os.scandir(crate.path)):
            os.rmdir(crate.path)
    return freed


def main():
    target = sys.argv[1] if len(sys.argv) > 1 else os.environ.get(
        "CARGO_TARGET_DIR", os.path.expanduser("~/.cache/dialer/target"))
    freed = 0
    for profile in ("debug", "release"):
        base = os.path.join(target, profile)
        if os.path.isdir(os.path.join(base, "deps")):
            freed += prune_deps(os.path.join(base, "deps"))
        if os.path.isdir(os.path.join(base, "incremental")):
            freed += prune_incremental(os.path.join(base, "incremental"))
    print(f"prune_cache: freed {freed / 2**30:.1f} GiB of stale build outputs in {target}")


if __name__ == "__main__":
    main()
