"""Shared fixtures (the tiny real model) and the test tiers: ``engine`` and ``browser`` modules say
so with ``pytestmark``; every other test is ``unit`` (``make test-unit``)."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

TIERS = ("engine", "browser")
_TIER_LINE = re.compile(r"^pytestmark = pytest\.mark\.(engine|browser)\b", re.M)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight 2-layer Llama with a byte-level tokenizer, built once per test run."""
    from tests.support.tinymodel import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(autouse=True)
def _keep_main_module() -> Iterator[None]:
    """Streamlit's AppTest runs each page as ``sys.modules["__main__"]`` and leaves it there; a
    process spawned later (multiprocessing "spawn") would re-run that page as its main module."""
    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that is neither ``engine`` nor ``browser`` as ``unit``; an engine test must
    say so (a test that asks for the tiny model and is not marked ``engine`` is an error)."""
    for item in items:
        if not any(item.get_closest_marker(t) for t in TIERS):
            if "tiny_model" in getattr(item, "fixturenames", ()):
                raise pytest.UsageError(f"{item.nodeid} uses a real engine: mark it engine")
            item.add_marker(pytest.mark.unit)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """A unit-only run (``-m unit``) does not even import the engine and browser modules: importing
    vLLM alone costs 11 s of CPU in every process, and ``-m`` deselects only after collection."""
    if (config.getoption("markexpr") != "unit" or collection_path.suffix != ".py"
            or not collection_path.name.startswith("test_")):
        return None
    return True if _TIER_LINE.search(collection_path.read_text()) else None
