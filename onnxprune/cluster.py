"""Ray, the optional way to spread independent work over more cores or machines: a sweep's points, the layer
engine's per-layer solves and chita-channel's per-group selections. The one module that imports Ray, and only
once a cluster is asked for (``--ray ADDRESS|auto|local``, ``ray_address=``); without one everything runs in
this process."""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, TypeVar

from tqdm import tqdm

from onnxprune.errors import ConfigError, ResourceError

log = logging.getLogger(__name__)

# Seconds to wait for a cluster's address to accept a connection.
CONNECT_TIMEOUT_S = 5.0
# Times a task is run again when the worker (or node) running it dies; an exception it raises is not retried.
RETRIES = 3
# Tasks in flight per CPU of the cluster: enough to keep workers busy while results come back, few enough
# that the arguments (a layer's Gram matrix, a model) do not all sit in the object store at once.
IN_FLIGHT_PER_CPU = 2

T = TypeVar("T")


@dataclass(frozen=True)
class Cluster:
    """The Ray cluster this process works on."""

    address: str
    nodes: int
    cpus: int

    def describe(self) -> str:
        return f"Ray cluster {self.address} ({self.nodes} node(s), {self.cpus} CPUs)"


_active: Cluster | None = None


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray needs Ray, an optional extra: pip install 'onnxprune[ray]'") from None
    return ray


def connect(address: str, *, cpus: int | None = None) -> Cluster:
    """Join the Ray cluster at ``address`` ('auto': the one this machine belongs to, started with ``ray start``;
    'local': a new one on this machine, of ``cpus`` CPUs (default: all its cores)); ConfigError when none
    answers there."""
    global _active
    if not address or not isinstance(address, str):
        raise ConfigError(f"a Ray address is 'auto', 'local', HOST:PORT or ray://HOST:PORT, not {address!r}")
    ray = _ray()
    if cpus is not None and address != "local":
        raise ConfigError("cpus= sets the size of a cluster started here: it goes with address 'local' only")
    if _active is not None and _active.address == address and cpus in (None, _active.cpus) and ray.is_initialized():
        return _active
    if address not in ("auto", "local"):
        _refuse_unreachable(address)
    if ray.is_initialized():
        ray.shutdown()
    local = {"num_cpus": cpus} if address == "local" else {}
    try:
        ray.init(address=None if address == "local" else address, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR, **local)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"no Ray cluster answers at {address!r} ({exc}): start one with `ray start --head` "
                          "(and `ray start --address HEAD:6379` on the other machines), or use --ray local; a cluster "
                          "with token authentication (what `ray start` sets up since Ray 2.59) also needs "
                          "RAY_AUTH_MODE=token here, and its token in ~/.ray/auth_token or RAY_AUTH_TOKEN") from None
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    _active = Cluster(address, len(nodes), int(ray.cluster_resources().get("CPU", 1)))
    log.info("working on %s", _active.describe())
    return _active


def _refuse_unreachable(address: str) -> None:
    """ConfigError at once when nothing listens at ``address`` (HOST:PORT or ray://HOST:PORT): Ray itself keeps
    trying for minutes."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"a Ray address is 'auto', 'local', HOST:PORT or ray://HOST:PORT, not {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise ConfigError(f"no Ray cluster answers at {address!r} ({exc.strerror or exc}): start one with "
                          "`ray start --head` there, or use --ray local") from None


def active() -> Cluster | None:
    """The cluster this process works on, None when everything runs here (inside a Ray task too)."""
    return _active


def disconnect() -> None:
    """Stop using the cluster (a local one started here stops)."""
    global _active
    if _active is not None:
        _ray().shutdown()
        _active = None


def share(value: Any) -> Any:
    """``value`` put once in the cluster's object store: a reference that tasks taking it as an argument
    receive as the value, without sending it once per task."""
    return _ray().put(value)


def _in_worker(function: Callable[..., T], threads: int, *args: Any) -> T:
    """What a task runs: ``function(*args)`` with ``threads`` threads for torch, ONNX Runtime and numpy's BLAS."""
    from onnxprune.threads import set_threads

    set_threads(threads)
    return function(*args)


def run_tasks(function: Callable[..., T], calls: Iterable[tuple], *, total: int, threads: int = 1,
              desc: str = "tasks") -> list[T]:
    """``function(*call)`` for every call as a Ray task on ``threads`` CPUs (torch, ONNX Runtime and BLAS use
    that many there), results in the calls' order. Calls are made lazily and at most ``IN_FLIGHT_PER_CPU`` per
    cluster CPU are in flight; a task whose worker dies runs again (``RETRIES``); an exception a task raises
    is raised here as it was raised there."""
    ray = _ray()
    if _active is None:
        raise ConfigError("no Ray cluster: connect first (--ray, ray_address=)")
    if threads > _active.cpus:
        raise ConfigError(f"a task of {threads} threads needs {threads} CPUs on one node; {_active.describe()}: "
                          "lower --threads")
    remote = ray.remote(_in_worker).options(name=f"onnxprune {desc}", num_cpus=threads, max_retries=RETRIES,
                                            retry_exceptions=False)
    window = max(1, IN_FLIGHT_PER_CPU * _active.cpus // threads)
    pending: dict[Any, int] = {}
    results: dict[int, T] = {}
    queue: Iterator[tuple[int, tuple]] = iter(enumerate(calls))
    with tqdm(total=total, desc=f"{desc} on Ray", unit="task", leave=False, disable=None) as bar:
        while True:
            while len(pending) < window:
                nxt = next(queue, None)
                if nxt is None:
                    break
                pending[remote.remote(function, threads, *nxt[1])] = nxt[0]
            if not pending:
                break
            done, _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(done[0])
            results[index] = _result(ray, done[0], desc)
            bar.update(1)
    return [results[i] for i in range(len(results))]


def _result(ray: Any, ref: Any, desc: str) -> Any:
    """A finished task's value; its own exception re-raised as such, a worker lost beyond the retries as a
    ResourceError."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        raise exc.cause from None
    except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError, ray.exceptions.OutOfMemoryError) as exc:
        raise ResourceError(f"a Ray worker running {desc} died {RETRIES + 1} times ({type(exc).__name__}); "
                            "see `ray status` and the workers' memory") from None
