"""A client of `toolkit serve` (tritonclient gRPC): sends encoded files to the `detect` model, with bounded
retries when the server goes away.

Transport errors (the server is down, restarting, or did not answer in time) are retried with exponential
backoff for at most `retry_s`, then `ServerUnavailable` is raised with one line; a request the server refuses
(wrong input) is never retried. After any failure the server's id is checked again before the retry, so a
server restarted with another artifact or engine is never mixed into one output.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass

import numpy as np

from toolkit.serving.server import IDENTITY_PREFIX, OUTPUTS

MODEL = "detect"
RETRIED = ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.CANCELLED")


class ServerUnavailable(ConnectionError):
    """The server did not answer for the whole retry window: the environment, not the input (exit 1)."""


class ServerChanged(RuntimeError):
    pass


@dataclass
class ClientConfig:
    url: str = "grpc://127.0.0.1:8001"
    concurrency: int = 16  # requests in flight
    retry_s: float = 30.0  # how long a server that went away is retried before giving up
    timeout_s: float = 300.0  # one request's deadline


def grpc_address(url: str) -> str:
    """grpc://HOST:PORT (or HOST:PORT) -> HOST:PORT."""
    rest = url[len("grpc://") :] if url.startswith("grpc://") else url
    host, sep, port = rest.rpartition(":")
    if "://" in rest or not sep or not host or not port.isdigit():
        raise ValueError(f"--server takes grpc://HOST:PORT (the gRPC port of 'toolkit serve'), got {url!r}")
    return rest


def _status(e: Exception) -> str:
    status = getattr(e, "status", None)
    return str(status() if callable(status) else status)


def _transient(e: Exception) -> bool:
    if _status(e) in RETRIED or isinstance(e, (ConnectionError, OSError)):
        return True
    # Triton answers NOT_FOUND "... has no available versions" while a model is unloaded: its Python process died
    # (`toolkit serve` was killed and tritonserver is about to follow) or a restarted server is still loading it.
    # The server is going away or coming back, so it is retried like UNAVAILABLE (seen under CI load, where the
    # SIGKILL fault test raced this window).
    return isinstance(e, _ModelNotReady) or (_status(e) == "StatusCode.NOT_FOUND" and "no available versions" in str(e))


class _ModelNotReady(Exception):
    """The server answers but `detect` is not loaded (yet, or any more): retried like a server away."""


class ServerError(RuntimeError):
    """The server answered with an error that retrying will not fix (one line, for the CLI)."""


class DetectClient:
    """Thread-safe: each thread gets its own gRPC client."""

    def __init__(self, cfg: ClientConfig):
        self.cfg = cfg
        self.address = grpc_address(cfg.url)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._clients: list = []  # every thread's client, so close() can cancel requests still in flight
        self._closed = False
        self.server_id: str | None = None
        self.max_batch: int | None = None

    def _client(self):
        import tritonclient.grpc as grpcclient

        c = getattr(self._local, "client", None)
        if c is None:
            with self._lock:
                if self._closed:
                    raise ServerUnavailable(f"the client of grpc://{self.address} was closed")
                c = self._local.client = grpcclient.InferenceServerClient(self.address)
                self._clients.append(c)
        return c

    def _reset(self) -> None:
        c = getattr(self._local, "client", None)
        self._local.client = None
        if c is not None:
            with self._lock:
                if c in self._clients:
                    self._clients.remove(c)
            with contextlib.suppress(Exception):  # closing a channel to a dead server may raise
                c.close()

    def _describe(self) -> tuple[str, int]:
        """(server id, max batch of `detect`); raises if the server is not a ready `toolkit serve`."""
        c = self._client()
        if not c.is_model_ready(MODEL):
            raise _ModelNotReady(f"grpc://{self.address} answers but its model {MODEL!r} is not ready")
        sid = c.get_server_metadata().name
        if not sid.startswith(IDENTITY_PREFIX):
            raise ValueError(f"grpc://{self.address} is a Triton server but not 'toolkit serve' (server id {sid!r})")
        return sid, int(c.get_model_config(MODEL).config.max_batch_size)

    def connect(self) -> str:
        """Reach the server (retrying for `retry_s`); -> its id, the digest of what it predicts with."""
        self.server_id, self.max_batch = self._retrying(self._describe, "connect")
        return self.server_id

    def _retrying(self, fn, what: str):
        t0, wait, tries, last = time.monotonic(), 0.25, 0, None
        while True:
            tries += 1
            try:
                return fn()
            except (ServerChanged, ServerUnavailable, ValueError):
                raise
            except Exception as e:
                if self._closed:
                    raise
                if not _transient(e):
                    first = str(e).splitlines()[0] if str(e) else type(e).__name__
                    raise ServerError(f"the server at grpc://{self.address} refused {what}: {first}") from None
                last = e
                self._reset()
            left = self.cfg.retry_s - (time.monotonic() - t0)
            if left <= 0:  # the whole window was tried: a last attempt ends it, never a wait cut short
                first = str(last).splitlines()[0] if str(last) else type(last).__name__
                raise ServerUnavailable(
                    f"the server at grpc://{self.address} did not answer ({what}: {first}) "
                    f"after {tries} tries over {time.monotonic() - t0:.0f} s"
                ) from None
            time.sleep(min(wait, left))
            wait = min(wait * 2, 4.0)

    def detect(self, payloads: list[bytes]) -> dict[str, np.ndarray]:
        """Encoded files -> {p_generated, logit, is_generated, error} arrays of len(payloads)."""
        import tritonclient.grpc as grpcclient

        arr = np.empty((len(payloads), 1), dtype=object)
        arr[:, 0] = payloads
        failed = []

        def once():
            if failed:  # the server went away once: is it still the same server?
                sid, _ = self._describe()
                if sid != self.server_id:
                    raise ServerChanged(
                        f"the server at grpc://{self.address} came back running something else "
                        f"(id {sid}, was {self.server_id}); rerun against the original server, or with --overwrite"
                    )
            try:
                inp = grpcclient.InferInput("image", list(arr.shape), "BYTES")
                inp.set_data_from_numpy(arr)
                res = self._client().infer(
                    MODEL,
                    [inp],
                    outputs=[grpcclient.InferRequestedOutput(n) for n in OUTPUTS],
                    client_timeout=self.cfg.timeout_s,
                )
            except Exception:
                failed.append(1)
                raise
            return {n: res.as_numpy(n).reshape(len(payloads)) for n in OUTPUTS}

        return self._retrying(once, "infer")

    def close(self) -> None:
        """Close every thread's channel: requests still in flight end at once (as CANCELLED, not retried)."""
        with self._lock:
            self._closed = True
            clients, self._clients = self._clients, []
        for c in clients:
            with contextlib.suppress(Exception):
                c.close()
