"""The recorder's per-process writer lookup: cached for the hot path, never stale."""

from __future__ import annotations

from pathlib import Path

import pytest

from profiler.recorder import context, ray_shards

pytestmark = pytest.mark.unit


def test_writer_is_cached_per_session_and_follows_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ray_shards.ENV_DRIVER_NODE, raising=False)
    monkeypatch.setenv(context.ENV_SESSION, str(tmp_path / "a.kvscope"))
    a = context.writer()
    assert a is not None and a is context.writer()
    assert context._cached and context._cached[0][1] is a  # the hot path's answer
    monkeypatch.setenv(context.ENV_SESSION, str(tmp_path / "b.kvscope"))
    b = context.writer()
    assert b is not None and b is not a and Path(b.path) == tmp_path / "b.kvscope"
    b.close()
    c = context.writer()  # a closed writer is never handed out again
    assert c is not None and c is not b and not c.closed
    c.close()
    a.close()
    monkeypatch.delenv(context.ENV_SESSION)
    assert context.writer() is None


def test_folder_session_caches_its_shard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ray_shards.ENV_DRIVER_NODE, raising=False)
    folder = tmp_path / "fleet"
    monkeypatch.setenv(context.ENV_SESSION, str(folder) + "/")
    w = context.writer()
    assert w is not None and Path(w.path).parent == folder
    assert context.writer() is w
    w.close()


def test_ray_worker_is_not_cached_until_its_shard_is_decided(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ray worker of a kvscope driver may learn later that it writes a local shard (Ray not yet
    connected): its lookup stays uncached until ``local_shard`` has decided."""
    monkeypatch.setenv(context.ENV_SESSION, str(tmp_path / "driver.kvscope"))
    monkeypatch.setenv(ray_shards.ENV_DRIVER_NODE, "some-node")
    monkeypatch.setattr(ray_shards, "_decided", False)
    w = context.writer()
    assert w is not None
    assert not context._cached
    w.close()
