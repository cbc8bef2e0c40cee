"""Asynchronous GET of /metrics for many servers on one event loop (aiohttp).

Same contract as ``metrics.fetch_text``: ``timeout_s`` bounds the whole request (connect, headers,
body), a body over ``max_bytes`` fails, and every failure is a ``FetchError`` whose message is one
line (the same wording, so gaps and stderr read alike). Connections are kept alive between scrapes:
a server answering four times a second is not asked to accept four new connections a second.
"""

from __future__ import annotations

import asyncio
import errno
import time
from urllib.parse import urlencode

import aiohttp

from profiler.attach.metrics import MAX_BODY_BYTES, FetchError, _too_big

_READ_CHUNK = 1 << 16

FILTERED_PATH = "/metrics/"
"""Where a vLLM server answers ``?name[]=`` filters: its ``/metrics`` route (the FastAPI
instrumentator's) renders the whole registry whatever the query, while prometheus_client's own
ASGI app, which vLLM mounts at ``/metrics/``, renders only the named samples' families."""


def filtered_url(url: str, names: tuple[str, ...] | None) -> str:
    """``url`` asking a Prometheus endpoint for only the sample ``names`` (``?name[]=...``, which
    prometheus_client's exposition honours: vLLM renders just those families); None: everything."""
    if not names:
        return url
    return url + ("&" if "?" in url else "?") + urlencode([("name[]", n) for n in names])


def new_client(limit: int = 256) -> aiohttp.ClientSession:
    """The one HTTP client of an attach (call inside the running event loop)."""
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=2, keepalive_timeout=30.0,
                                     enable_cleanup_closed=True, ttl_dns_cache=300)
    return aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                 headers={"Accept-Encoding": "identity"})


async def fetch_async(client: aiohttp.ClientSession, url: str, timeout_s: float,
                      max_bytes: int = MAX_BODY_BYTES) -> tuple[int, str]:
    """GET ``url``: (HTTP status, body text); FetchError with a one-line reason on failure.

    A status of 400 or more is returned (not raised) when it is 400/404, so a caller can tell "this
    server does not take that query" from a failing server; other 4xx/5xx raise. A kept-alive
    connection that the server closed meanwhile is retried once on a new one, within the deadline.
    """
    deadline = time.monotonic() + timeout_s
    for attempt in (0, 1):
        try:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            return await asyncio.wait_for(_get(client, url, max_bytes), left)
        except FetchError:
            raise
        except TimeoutError as exc:
            raise FetchError(f"GET {url} timed out after {timeout_s:g} s") from exc
        except aiohttp.ServerDisconnectedError as exc:
            if attempt == 0:  # a kept-alive connection the server had closed: once more, anew
                continue
            raise FetchError(f"cannot reach {url}: server closed the connection without an "
                             "answer") from exc
        except aiohttp.ClientConnectorError as exc:
            raise FetchError(f"cannot reach {url}: {_os_reason(exc.os_error)}") from exc
        except aiohttp.ClientOSError as exc:
            raise FetchError(f"cannot reach {url}: {_os_reason(exc)}") from exc
        except (aiohttp.ClientPayloadError, aiohttp.ClientResponseError) as exc:
            raise FetchError(f"GET {url}: broken HTTP answer ({_first(exc)})") from exc
        except aiohttp.InvalidURL as exc:
            raise FetchError(f"bad URL {url}: {_first(exc)}") from exc
        except aiohttp.ClientError as exc:
            raise FetchError(f"GET {url}: {_first(exc)}") from exc
    raise FetchError(f"cannot reach {url}: server closed the connection without an answer")


async def _get(client: aiohttp.ClientSession, url: str, max_bytes: int) -> tuple[int, str]:
    async with client.get(url, allow_redirects=False) as resp:
        if resp.status >= 400 and resp.status not in (400, 404):
            raise FetchError(f"GET {url} returned HTTP {resp.status}")
        length = resp.content_length
        if length is not None and length > max_bytes:
            raise FetchError(_too_big(url, max_bytes))
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(_READ_CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise FetchError(_too_big(url, max_bytes))
            chunks.append(chunk)
        return resp.status, b"".join(chunks).decode("utf-8", errors="replace")


def _os_reason(exc: OSError | None) -> str:
    if exc is None:
        return "connection failed"
    if isinstance(exc, ConnectionRefusedError) or exc.errno == errno.ECONNREFUSED:
        return "connection refused (is the server running on that port?)"
    if exc.errno == errno.ECONNRESET:
        return "Connection reset by peer"
    return _first(exc)


def _first(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0]
