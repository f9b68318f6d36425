#!/usr/bin/env python3
"""Print a pip constraints file that pins every dependency of pyproject.toml to its declared floor.

pip has no "lowest" resolver, so CI installs the floors by constraining each direct dependency
(runtime and the `test` extra) to `==floor`. A dependency without a `>=` floor is an error: every
dependency must declare the oldest version it is known to work with, and that floor must be an
exact released version (`tifffile>=2023.7.4`, not `>=2023.7`, which names no release), or pip
cannot install it here.

    python3 .ci/lowest_constraints.py [--except NAME ...] > constraints.txt
    VENV/bin/python .ci/lowest_constraints.py --check [--except NAME ...]   # installed == floors?
"""
import argparse
import re
import sys
from importlib import metadata
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: run this with a 3.11+ interpreter (Debian 12's python3 is 3.11)
    raise SystemExit("lowest_constraints.py needs Python 3.11+ (tomllib)") from None

REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*([^;]*)")


def floors(pyproject: Path, extras=("test",)):
    project = tomllib.loads(pyproject.read_text())["project"]
    reqs = list(project.get("dependencies", []))
    for extra in extras:
        reqs += project.get("optional-dependencies", {}).get(extra, [])
    out = {}
    for req in reqs:
        m = REQ.match(req)
        if not m:
            raise SystemExit(f"cannot parse requirement {req!r}")
        name, spec = m.group(1).lower().replace("_", "-"), m.group(2)
        low = [s.strip()[2:].strip() for s in spec.split(",") if s.strip().startswith(">=")]
        if len(low) != 1:
            raise SystemExit(f"{name}: no single '>=' floor in {req!r}")
        out[name] = low[0]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pyproject", type=Path, default=Path(__file__).resolve().parent.parent / "pyproject.toml")
    ap.add_argument("--except", dest="skip", nargs="*", default=[], help="names to leave unpinned")
    ap.add_argument("--check", action="store_true",
                    help="instead, print each installed version beside its floor; exit 1 unless all are equal")
    args = ap.parse_args()
    skip = {s.lower() for s in args.skip}
    bad = 0
    for name, low in floors(args.pyproject).items():
        if name in skip:
            continue
        if not args.check:
            sys.stdout.write(f"{name}=={low}\n")
            continue
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            have = "missing"
        same = _release(have) == _release(low)
        bad += not same
        print(f"{name:14} floor {low:12} installed {have}{'' if same else '   <- not the floor'}")
    if bad:
        raise SystemExit(f"{bad} dependencies are not at their declared floor")


def _release(v: str) -> tuple:
    """'1.26' and '1.26.0' name the same release (pip's == pads with zeros)."""
    parts = [int(p) for p in re.match(r"^\d+(?:\.\d+)*", v).group(0).split(".")] if v[:1].isdigit() else [v]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


if __name__ == "__main__":
    main()
