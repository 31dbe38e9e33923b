"""Docker cannot run here; check statically that the images install exactly the locked set."""
from __future__ import annotations

import configparser
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKERFILES = ["docker/Dockerfile", "docker/Dockerfile.gpu"]


def locked() -> dict[str, str]:
    pins = {}
    with open(os.path.join(ROOT, "requirements.lock")) as fh:
        for line in fh:
            line = line.split("#", 1)[0].strip()
            if line:
                name, version = line.split("==")
                pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def run_lines(path: str) -> list[str]:
    text = open(os.path.join(ROOT, path)).read().replace("\\\n", " ")
    return [l.strip()[4:] for l in text.splitlines() if l.strip().startswith("RUN ")]


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_installs_exactly_the_lock(dockerfile: str) -> None:
    text = open(os.path.join(ROOT, dockerfile)).read()
    assert re.search(r"^FROM python:3\.11", text, re.M), "base image must match the lock's Python"
    assert "COPY requirements.lock" in text
    installs = [cmd for line in run_lines(dockerfile) for cmd in line.split("&&")
                if "pip install" in cmd]
    # One install of the lock without re-resolving, one of mtf itself without dependencies.
    assert [c.split("pip install", 1)[1].split() for c in installs] == [
        ["--no-cache-dir", "--no-deps", "-r", "requirements.lock"],
        ["--no-cache-dir", "--no-deps", "--no-build-isolation", "."],
    ]
    assert "mtf.spark --fetch-jars" in text, "Delta jars must be baked into the image"


def test_lock_pins_every_declared_dependency() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    pins = locked()
    for req in cfg["options"]["install_requires"].split("\n"):
        req = req.strip()
        if not req:
            continue
        name = re.sub(r"[-_.]+", "-", re.split(r"[<>=!~ ]", req, 1)[0]).lower()
        assert name in pins, f"{name} is declared in setup.cfg but missing from requirements.lock"
    assert pins["pyarrow"] == "14.0.2" and pins["petastorm"] == "0.13.1"
    assert pins["pyspark"].startswith("4.0.")


def test_lock_matches_this_environment() -> None:
    """The venv the tests run in is exactly the lock (so CI tests what the images ship)."""
    import sysconfig
    from importlib import metadata

    pins = locked()
    # Only the environment's site-packages: setuptools puts its vendored copies (packaging,
    # zipp, ...) on sys.path once imported.
    site = sysconfig.get_paths()["purelib"]
    have = {re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower(): d.version
            for d in metadata.distributions(path=[site])}
    wrong = {n: (v, have.get(n)) for n, v in pins.items() if have.get(n) != v}
    assert not wrong, f"installed versions differ from requirements.lock: {wrong}"
