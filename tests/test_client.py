"""toolkit/serving/client.py without a server: the address rule, which errors are retried, the retry window and
its backoff on a fake clock, the server-identity checks, and what `detect` sends and returns, against a stand-in
for tritonclient's gRPC client. The real server is exercised in tests/test_serving.py."""

from __future__ import annotations

import numpy as np
import pytest

from toolkit.serving import client as client_mod
from toolkit.serving.client import (
    ClientConfig,
    DetectClient,
    ServerChanged,
    ServerError,
    ServerUnavailable,
    _ModelNotReady,
    _status,
    _transient,
    grpc_address,
)

pytest.importorskip("tritonclient.grpc")


class Status(Exception):
    def __init__(self, code: str, text: str = "boom"):
        super().__init__(text)
        self.code = code

    def status(self):
        return self.code


def test_config_defaults():
    """Bug: a default moved (the CLI's --help and the README quote them)."""
    c = ClientConfig()
    assert (c.url, c.concurrency, c.retry_s, c.timeout_s) == ("grpc://127.0.0.1:8001", 16, 30.0, 300.0)
    assert client_mod.MODEL == "detect"
    assert client_mod.RETRIED == ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.CANCELLED")


@pytest.mark.parametrize(
    "url, want",
    [("grpc://127.0.0.1:8001", "127.0.0.1:8001"), ("localhost:9", "localhost:9"), ("grpc://[::1]:8001", "[::1]:8001")],
)
def test_grpc_address_accepts(url, want):
    assert grpc_address(url) == want


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8000", "grpc://127.0.0.1", "grpc://:8001", "127.0.0.1:x", "grpc://h:", "grpc://grpc://h:1"],
)
def test_grpc_address_refuses(url):
    """Bugs: a scheme other than grpc, a missing host or port, or a non-numeric port accepted."""
    with pytest.raises(ValueError, match=r"--server takes grpc://HOST:PORT \(the gRPC port of 'toolkit serve'\), got"):
        grpc_address(url)


def test_status_and_transient_classification():
    """Bugs: a retried status not retried, a refusal retried, or NOT_FOUND retried without 'no available versions'."""

    class AttrStatus(Exception):
        status = "StatusCode.UNAVAILABLE"

    assert _status(Status("StatusCode.CANCELLED")) == "StatusCode.CANCELLED"
    assert _status(AttrStatus()) == "StatusCode.UNAVAILABLE" and _status(ValueError()) == "None"
    for code in ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.CANCELLED"):
        assert _transient(Status(code))
    assert _transient(AttrStatus()) and _transient(ConnectionRefusedError()) and _transient(OSError())
    assert _transient(_ModelNotReady("x"))
    assert _transient(Status("StatusCode.NOT_FOUND", "model 'detect' has no available versions"))
    assert not _transient(Status("StatusCode.NOT_FOUND", "unknown model"))
    assert not _transient(Status("StatusCode.INVALID_ARGUMENT", "no available versions"))
    assert not _transient(RuntimeError("no available versions"))


class Clock:
    def __init__(self):
        self.t, self.sleeps = 100.0, []

    def monotonic(self):
        return self.t

    def sleep(self, s):
        self.sleeps.append(s)
        self.t += s


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(client_mod.time, "monotonic", c.monotonic)
    monkeypatch.setattr(client_mod.time, "sleep", c.sleep)
    return c


def _client(retry_s=30.0):
    c = DetectClient(ClientConfig(url="grpc://127.0.0.1:1", retry_s=retry_s))
    c.resets = 0

    def reset():
        c.resets += 1

    c._reset = reset
    return c


def test_retrying_backs_off_then_succeeds(clock):
    """Bugs: no retry, no reset of the broken channel, or the backoff not doubling from 0.25 s to at most 4 s."""
    c = _client()
    errors = [Status("StatusCode.UNAVAILABLE")] * 7

    def fn():
        if errors:
            raise errors.pop()
        return "ok"

    assert c._retrying(fn, "infer") == "ok"
    assert clock.sleeps == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0] and c.resets == 7


def test_retrying_gives_up_after_the_window_with_one_line(clock):
    """Bugs: the window not honoured, the last wait not cut to what is left, or the message losing its figures."""
    c = _client(retry_s=3.0)

    def fn():
        clock.t += 0.1
        raise Status("StatusCode.UNAVAILABLE", "connect failed\nsecond line")

    with pytest.raises(ServerUnavailable) as e:
        c._retrying(fn, "infer")
    # tries end at 0.1, 0.45, 1.05, 2.15 s; waits 0.25, 0.5, 1.0, then 0.85 (cut to what is left); the 5th try,
    # at 3.1 s, ends it
    assert clock.sleeps == pytest.approx([0.25, 0.5, 1.0, 0.85])
    assert str(e.value) == (
        "the server at grpc://127.0.0.1:1 did not answer (infer: connect failed) after 5 tries over 3 s"
    )
    assert e.value.__cause__ is None and e.value.__suppress_context__


def test_retrying_never_retries_a_refusal_or_a_closed_client(clock):
    """Bugs: a refused request retried, its message not the first line, or a closed client retrying."""
    c = _client()
    calls = []

    def refused():
        calls.append(1)
        raise Status("StatusCode.INVALID_ARGUMENT", "bad image\ndetails")

    with pytest.raises(ServerError, match=r"^the server at grpc://127.0.0.1:1 refused infer: bad image$"):
        c._retrying(refused, "infer")
    assert calls == [1] and clock.sleeps == []

    def silent():
        raise RuntimeError()

    with pytest.raises(ServerError, match=r"refused connect: RuntimeError$"):  # no message: the type's name
        c._retrying(silent, "connect")
    for exc in (ServerChanged("x"), ServerUnavailable("y"), ValueError("z")):

        def raise_it(exc=exc):
            raise exc

        with pytest.raises(type(exc)):
            c._retrying(raise_it, "infer")
    c._closed = True
    with pytest.raises(Status):
        c._retrying(lambda: (_ for _ in ()).throw(Status("StatusCode.UNAVAILABLE")), "infer")
    assert clock.sleeps == []


class FakeTriton:
    """tritonclient.grpc.InferenceServerClient's surface that the client uses."""

    def __init__(self, server="causal-deploy-toolkit/aaaa", ready=True, max_batch=8, fail=()):
        self.server, self.ready, self.max_batch, self.fail = server, ready, max_batch, list(fail)
        self.requests, self.closed = [], False

    def is_model_ready(self, model):
        assert model == "detect"
        return self.ready

    def get_server_metadata(self):
        return type("M", (), {"name": self.server})()

    def get_model_config(self, model):
        assert model == "detect"
        return type("C", (), {"config": type("K", (), {"max_batch_size": self.max_batch})()})()

    def infer(self, model, inputs, outputs=None, client_timeout=None):
        if self.fail:
            raise self.fail.pop(0)
        (inp,) = inputs
        from tritonclient.utils import deserialize_bytes_tensor

        self.payloads = deserialize_bytes_tensor(inp._raw_content).tolist()  # what went over the wire
        self.requests.append(
            (model, inp.name(), inp.shape(), inp.datatype(), [o.name() for o in outputs], client_timeout)
        )
        n = inp.shape()[0]
        data = {
            "p_generated": np.linspace(0, 1, n).reshape(n, 1),
            "logit": np.arange(n, dtype=np.float32)[:, None],
            "is_generated": np.ones((n, 1), bool),
            "error": np.array([b""] * n, dtype=object)[:, None],
        }
        return type("R", (), {"as_numpy": lambda self, name: data[name]})()

    def close(self):
        self.closed = True


def test_connect_and_detect(clock):
    """Bugs: the id or max batch not read, the request built wrongly, outputs not flattened, or the deadline lost."""
    fake = FakeTriton(max_batch=16)
    c = _client()
    c.cfg.timeout_s = 12.5
    c._client = lambda: fake
    assert c.connect() == "causal-deploy-toolkit/aaaa" and c.server_id == "causal-deploy-toolkit/aaaa"
    assert c.max_batch == 16
    out = c.detect([b"a", b"bb", b"ccc"])
    assert fake.requests == [
        ("detect", "image", [3, 1], "BYTES", ["p_generated", "logit", "is_generated", "error"], 12.5)
    ]
    assert fake.payloads == [b"a", b"bb", b"ccc"]
    assert set(out) == {"p_generated", "logit", "is_generated", "error"}
    assert out["logit"].tolist() == [0.0, 1.0, 2.0] and out["p_generated"].shape == (3,)


def test_detect_retries_the_same_server_and_refuses_another(clock):
    """Bugs: the id not re-checked after a failure, or a changed id let through."""
    fake = FakeTriton(fail=[Status("StatusCode.UNAVAILABLE")])
    c = _client()
    c._client = lambda: fake
    c.connect()
    assert c.detect([b"a"])["logit"].tolist() == [0.0] and clock.sleeps == [0.25]
    fake.fail = [Status("StatusCode.UNAVAILABLE")]
    real_infer = fake.infer

    def infer_then_restart(*a, **k):
        try:
            return real_infer(*a, **k)
        finally:
            fake.server = "causal-deploy-toolkit/bbbb"

    fake.infer = infer_then_restart
    with pytest.raises(
        ServerChanged,
        match=r"came back running something else \(id causal-deploy-toolkit/bbbb, "
        r"was causal-deploy-toolkit/aaaa\)",
    ):
        c.detect([b"a"])


def test_describe_refuses_a_foreign_server_and_retries_a_model_not_ready(clock):
    """Bugs: a Triton server other than `toolkit serve` accepted, or an unloaded model refused, not waited for."""
    c = _client(retry_s=1.0)
    c._client = lambda: FakeTriton(server="triton")
    with pytest.raises(ValueError, match=r"is a Triton server but not 'toolkit serve' \(server id 'triton'\)"):
        c.connect()
    fake = FakeTriton(ready=False)
    c._client = lambda: fake
    with pytest.raises(ServerUnavailable, match=r"connect: grpc://127.0.0.1:1 answers but its model 'detect' is not"):
        c.connect()
    assert len(clock.sleeps) >= 2


def test_channels_are_per_thread_and_closed(monkeypatch):
    """Bugs: one channel shared across threads, a reset channel left open or listed, or a closed client reopening."""
    import threading

    import tritonclient.grpc as grpcclient

    made = []

    def make(address):
        made.append(FakeTriton())
        made[-1].address = address
        return made[-1]

    monkeypatch.setattr(grpcclient, "InferenceServerClient", make)
    c = DetectClient(ClientConfig(url="grpc://127.0.0.1:7"))
    a = c._client()
    assert c._client() is a and a.address == "127.0.0.1:7"
    other = []
    t = threading.Thread(target=lambda: other.append(c._client()))
    t.start()
    t.join()
    assert other[0] is not a and c._clients == [a, other[0]]
    c._reset()
    assert a.closed and c._clients == [other[0]]
    b = c._client()
    assert b is not a and c._clients == [other[0], b]
    c.close()
    assert other[0].closed and b.closed and c._clients == []
    with pytest.raises(ServerUnavailable, match=r"the client of grpc://127\.0\.0\.1:7 was closed"):
        c._reset() or c._client()


def test_a_channel_that_fails_to_close_is_dropped_quietly():
    """Bugs: closing a channel to a dead server raising out of `_reset` or `close`, or `_reset` failing in a thread
    that never opened a channel."""

    class Dying(FakeTriton):
        def close(self):
            raise RuntimeError("channel already gone")

    c = DetectClient(ClientConfig(url="grpc://127.0.0.1:7"))
    c._reset()  # this thread has no channel yet
    d = Dying()
    c._local.client = d
    c._clients.append(d)
    c._reset()
    assert c._clients == [] and c._local.client is None
    c._clients.append(Dying())
    c.close()
    assert c._clients == [] and c._closed


def test_messages_name_the_request_and_an_empty_error_by_its_type(clock):
    """Bugs: `detect`'s failures not saying 'infer', or a transport error with an empty message crashing the
    give-up message instead of naming the error's type."""
    c = _client(retry_s=0.5)
    fake = FakeTriton(fail=[Status("StatusCode.INVALID_ARGUMENT", "bad batch")])
    c._client = lambda: fake
    c.connect()
    with pytest.raises(ServerError, match=r"^the server at grpc://127.0.0.1:1 refused infer: bad batch$"):
        c.detect([b"a"])
    fake.fail = [Status("StatusCode.UNAVAILABLE", "")] * 10
    with pytest.raises(ServerUnavailable, match=r"did not answer \(infer: Status\) after \d+ tries"):
        c.detect([b"a"])
