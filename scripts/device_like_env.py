"""Build a local Python environment that holds only the GPU machine's packages, for dry runs.

    python scripts/device_like_env.py /tmp/gpu-dry            # from this interpreter's packages
    /tmp/gpu-dry/bin/python -c "import open_clip"             # fails: not on that machine

The GPU machine is bare: torch, torchvision, timm, numpy, pytest and the rest of
scripts/device_packages.txt, but no open_clip, pydantic, Ray, Optuna or MLflow, and no registry
to install them from. `scripts/gpu_check.sh` must therefore work with nothing but those packages
plus the wheels `scripts/gpu_wheels.py` fetched. This makes a virtual environment (no packages of
its own) and links into it, from an existing environment, exactly the installed distributions
whose names are on that list, so a dry run fails here on any import that would fail there.
(Versions are this machine's, not that one's: only what is importable is imitated.)
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import sysconfig
from collections import defaultdict
from importlib import metadata
from pathlib import Path

PACKAGE_LIST = Path(__file__).with_name("device_packages.txt")


def normalise(name: str) -> str:
    """PEP 503 name: lower case, runs of '-', '_', '.' as one '-'."""
    return re.sub(r"[-_.]+", "-", name).lower()


def device_packages(path: Path = PACKAGE_LIST) -> set[str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return {normalise(line) for line in lines if line and not line.startswith("#")}


def with_requirements(allowed: set[str], site: Path) -> set[str]:
    """`allowed` plus, transitively, what its distributions installed in `site` require.

    The machine's packages come with their own requirements installed; where this machine's
    version of one needs a package that the list does not name (a newer huggingface-hub's HTTP
    client, say), that package is linked too, as it would be there."""
    from packaging.requirements import Requirement

    dists = {normalise(d.metadata["Name"]): d for d in metadata.distributions(path=[str(site)])}
    closure, todo = set(allowed), [name for name in allowed if name in dists]
    while todo:
        for line in dists[todo.pop()].requires or []:
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            name = normalise(requirement.name)
            if name in dists and name not in closure:
                closure.add(name)
                todo.append(name)
    return closure


def owners_by_entry(site: Path) -> dict[tuple[str, ...], set[str]]:
    """For each top-level entry of `site` (and each entry one level below), the normalised names
    of the distributions that installed files under it."""
    owners: dict[tuple[str, ...], set[str]] = defaultdict(set)
    for dist in metadata.distributions(path=[str(site)]):
        name = normalise(dist.metadata["Name"])
        for file in dist.files or []:
            parts = Path(file).parts
            if not parts or parts[0] == "..":  # scripts outside site-packages
                continue
            owners[parts[:1]].add(name)
            if len(parts) > 2:
                owners[parts[:2]].add(name)
    return owners


def link_device_packages(source: Path, target: Path, allowed: set[str]) -> list[str]:
    """Symlink into `target` every entry of `source` that only allowed distributions own; an
    entry shared with others (a namespace package such as google/) becomes a real folder with
    links to its allowed sub-entries. Returns the linked entries."""
    owners = owners_by_entry(source)
    linked = []
    for entry in sorted(e for e in owners if len(e) == 1):
        names = owners[entry]
        if not names & allowed:
            continue
        src, dst = source / entry[0], target / entry[0]
        if names <= allowed or not src.is_dir():
            dst.symlink_to(src)
            linked.append(entry[0])
            continue
        dst.mkdir()
        for sub in sorted(e for e in owners if len(e) == 2 and e[0] == entry[0]):
            if owners[sub] <= allowed:
                (dst / sub[1]).symlink_to(source / sub[0] / sub[1])
                linked.append("/".join(sub))
    return linked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("env", type=Path, help="the environment to create (must not exist)")
    parser.add_argument("--source-site", type=Path, default=Path(sysconfig.get_paths()["purelib"]),
                        help="site-packages to link from (default: this interpreter's)")
    args = parser.parse_args()
    if args.env.exists():
        sys.exit(f"{args.env} exists: remove it or name another folder")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(args.env)], check=True)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    target = args.env / "lib" / version / "site-packages"
    listed = device_packages()
    allowed = with_requirements(listed, args.source_site)
    linked = link_device_packages(args.source_site.resolve(), target, allowed)
    present = {normalise(d.metadata["Name"]) for d in
               metadata.distributions(path=[str(args.source_site)])}
    print(f"{args.env}: {len(present & listed)} of the GPU machine's {len(listed)} packages "
          f"linked from {args.source_site} ({len(linked)} entries), and what this machine's "
          f"versions of them require: {', '.join(sorted(allowed - listed)) or 'nothing'}; "
          f"left out: {', '.join(sorted(present - allowed))}")


if __name__ == "__main__":
    main()
