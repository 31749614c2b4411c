"""A torch.distributed backend named "pccl_arrays": ``import pccl_arrays.torch`` registers it.

    import pccl_arrays.torch  # noqa: F401
    dist.init_process_group("pccl_arrays", init_method="pccl://master-host:48148", rank=r, world_size=W)

How this works. torch 2.13 lets a Python class stand in for a whole process group: a subclass of
``torch.distributed.ProcessGroup`` (a pybind11 trampoline, so C++ callers such as DDP's reducer reach its methods
through virtual calls) with a subclass of ``torch.distributed._Work`` for handles; no C++ ``c10d::Backend`` is
needed (torch's Python ``Backend`` class cannot even be subclassed: it has no constructor). The creator registered
with ``Backend.register_backend(..., extended_api=True)`` returns such a :class:`ProcessGroup`. The init method
``pccl://host:port?option=value`` is a rendezvous handler that gives torch a process-local store holding the URL,
where the creator reads it; else the master comes from ``pg_options=Options(master=...)`` or $PCCL_ARRAYS_MASTER.

The group owns one :class:`~pccl_arrays.Communicator`. At creation it connects, votes newcomers in until the group
has ``world_size`` peers, and all-gathers every peer's torch rank: our ring is in admission order, not torch's, so
each peer id gets its torch rank. Each collective is the communicator's blocking call run on a thread of its pool,
as its async forms are (tags from its counter, which agrees across peers because torch issues collectives in the
same order everywhere), translated both ways: broadcast's source rank names a peer, all_gather rows (in ring
order) go to the torch rank of the peer that sent them, reduce_scatter's input chunks are permuted so that torch
rank r gets chunk r; then the operation checks that it ran on exactly this group's peers. A :class:`Work`
completes a ``torch.futures.Future`` with the output tensors (DDP reads that); its ``wait()`` raises our errors.

Faults. A lost peer fails the operation on every survivor with PeerLostError (through DDP's C++ reducer it arrives
as a RuntimeError naming it: :func:`retryable` tells). An operation that ran on fewer peers than the torch group
(the ring shrank after a loss) raises PeerLostError too, on every peer of it, after the fact: its outputs lack some
ranks and must be dropped. The group stays broken until every peer calls :meth:`ProcessGroup.recover`
(``dist.group.WORLD.recover()``): it waits for this group's operations in flight, votes newcomers in, optionally
waits for ``world_size`` peers, and deals torch ranks again (members first, in their old order, then newcomers),
so ``dist.get_rank()`` and ``dist.get_world_size()`` follow. DDP reads the size once: wrap the module in a new DDP
after a recovery (which also hands rank 0's parameters to newcomers).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import threading
import time
from datetime import timedelta
from typing import Any, Callable, Optional
from urllib.parse import parse_qsl, urlparse

import numpy as np
import torch
import torch.distributed as dist
from torch.futures import Future

from .communicator import Communicator
from .errors import InvalidArgumentError, PCCLError, PCCLTimeoutError, PeerLostError, TooFewPeersError

BACKEND = "pccl_arrays"  #: the name for ``init_process_group(backend=...)``
SCHEME = "pccl"  #: the init_method scheme: ``pccl://host:port?option=value``
ENV_MASTER = "PCCL_ARRAYS_MASTER"  #: ``host:port`` (or a pccl:// URL) of the master, for other init methods
_STORE_KEY = "pccl_arrays/init_method"
_RANK_TAG = (1 << 44) + 0x7063  # the rank exchange's tag: clear of user tags and of the async counter

_OPS = {dist.ReduceOp.SUM: "sum", dist.ReduceOp.AVG: "avg", dist.ReduceOp.PRODUCT: "prod",
        dist.ReduceOp.MIN: "min", dist.ReduceOp.MAX: "max"}
_COMM_ARGS = {name: p.default for name, p in inspect.signature(Communicator.__init__).parameters.items()
              if name not in ("self", "master")}


@dataclasses.dataclass
class Options:
    """``init_process_group(..., pg_options=Options(...))``: what the URL cannot say.

    Attributes:
        master: ``host:port`` of the master; overrides the pccl:// URL and ``PCCL_ARRAYS_MASTER``.
        communicator: keyword arguments of :class:`~pccl_arrays.Communicator` (connections, data_timeout,
            secret, listen, advertise, ...); they override the URL's. ``op_timeout`` defaults to torch's timeout.
        join_timeout: seconds to wait for all ``world_size`` peers at creation (default: torch's timeout).
    """

    master: Optional[str] = None
    communicator: dict = dataclasses.field(default_factory=dict)
    join_timeout: Optional[float] = None


def _parse(address: str) -> tuple[str, dict]:
    """``host:port`` or ``pccl://host:port?k=v`` -> (master, Communicator keyword arguments, each converted to
    the type of its default); torch's rank and world_size are dropped."""
    if "://" not in address:
        return address, {}
    url = urlparse(address)
    if url.scheme != SCHEME or not url.netloc:
        raise InvalidArgumentError(f"expected pccl://host:port, not {address!r}")
    kw = {}
    for key, text in parse_qsl(url.query):
        if key in ("rank", "world_size"):
            continue
        if key not in _COMM_ARGS:
            raise InvalidArgumentError(f"unknown pccl:// option {key!r}; known: {', '.join(sorted(_COMM_ARGS))}")
        default = _COMM_ARGS[key]
        if isinstance(default, bool):  # bool("false") would be True
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise InvalidArgumentError(f"pccl:// option {key!r} takes true or false, not {text!r}")
            kw[key] = text.lower() in ("true", "1", "yes")
        else:
            kw[key] = text if default is None or isinstance(default, str) else type(default)(text)
    return url.netloc, kw


def _rendezvous(url: str, **_kw):
    """torch's rendezvous for pccl:// URLs: no shared store is needed, the master does the matchmaking."""
    query = dict(parse_qsl(urlparse(url).query))
    rank, world = int(query.get("rank", -1)), int(query.get("world_size", -1))
    if rank < 0 or world < 1:
        raise ValueError("pccl:// needs init_process_group(rank=..., world_size=...)")
    _parse(url)  # refuse a bad URL here, before torch goes on
    store = dist.HashStore()
    store.set(_STORE_KEY, url)
    yield store, rank, world
    raise RuntimeError("a pccl:// rendezvous cannot be restarted: call init_process_group again")


def _init_method_of(store: Any) -> Optional[str]:
    while isinstance(store, dist.PrefixStore):
        store = store.underlying_store
    if store is not None and store.check([_STORE_KEY]):
        return store.get(_STORE_KEY).decode()
    return None


def _create(opts: Any, options: Optional[Options]) -> "ProcessGroup":
    """The creator torch calls (extended API): ``opts`` is c10d's DistributedBackendOptions."""
    if opts.global_ranks_in_group:  # empty for the default group
        raise NotImplementedError("the pccl_arrays backend serves the default group only, not dist.new_group()")
    options = options if options is not None else Options()
    if not isinstance(options, Options):
        raise InvalidArgumentError(f"pg_options must be pccl_arrays.torch.Options, not {type(options).__name__}")
    address = options.master or _init_method_of(opts.store) or os.environ.get(ENV_MASTER)
    if not address:
        raise InvalidArgumentError(f"no master address: use init_method='pccl://host:port', set {ENV_MASTER}, "
                                   "or pass pg_options=pccl_arrays.torch.Options(master=...)")
    master, kw = _parse(address)
    timeout = opts.timeout.total_seconds() if isinstance(opts.timeout, timedelta) else None
    kw.setdefault("op_timeout", timeout)
    kw.update(options.communicator)
    join = options.join_timeout if options.join_timeout is not None else timeout
    return ProcessGroup(Communicator(master, **kw), opts.group_rank, opts.group_size, join_timeout=join)


class _Failed(tuple):
    """(error,): an operation's error on its way through a torch future (see Work)."""


def _unwrap(source: Future) -> list:
    value = source.value()
    if isinstance(value, _Failed):
        raise value[0]
    return value


class Work(dist._Work):
    """One collective in flight: ``wait()`` returns True or raises the operation's PCCLError (PeerLostError for a
    lost peer); ``get_future()`` completes with the output tensors, or fails with the error's text."""

    def __init__(self, outputs: list):
        super().__init__()
        self._outputs = outputs
        self._handle: Any = None  # the communicator's handle, set right after the operation is submitted
        self._error: Optional[BaseException] = None
        # torch's Future.set_exception() completes a future *successfully* with the exception as its value (only
        # Python's wait() raises it), and DDP's C++ reducer would take that value for tensors. A callback that
        # raises is what marks a torch future failed for C++ readers too, so the future handed out is one.
        self._source: Future = Future()
        self._future: Future = self._source.then(_unwrap)

    def _finish(self, error: Optional[BaseException]) -> None:
        self._error = error
        self._source.set_result(self._outputs if error is None else _Failed((error,)))

    def wait(self, timeout: Optional[timedelta] = None) -> bool:
        seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else None
        self._handle.wait(seconds if seconds and seconds > 0 else None)  # torch's 0: no bound
        return True

    def get_future(self) -> Future:
        return self._future

    def is_completed(self) -> bool:
        return self._source.done()

    def is_success(self) -> bool:
        return self._source.done() and self._error is None

    def exception(self) -> Optional[BaseException]:
        return self._error

    def result(self) -> list:
        return self._outputs


class ProcessGroup(dist.ProcessGroup):
    """The torch process group over one Communicator (see the module docstring). Reach it as
    ``dist.group.WORLD``; :attr:`comm` is the communicator, :meth:`recover` rebuilds the group after a loss."""

    def __init__(self, comm: Communicator, rank: int, world_size: int, *, join_timeout: Optional[float] = None):
        super().__init__(rank, world_size)
        self.comm = comm
        self._rank, self._size = rank, world_size
        self._by_peer: dict[int, int] = {}  # peer id -> torch rank
        self._handles: list = []
        self._lock = threading.Lock()
        deadline = None if join_timeout is None else time.monotonic() + join_timeout
        try:
            comm.connect(timeout=join_timeout)
            self._gather_peers(world_size, deadline)
            self._exchange_ranks()
        except BaseException:
            comm.close()
            raise

    # -- what torch asks of a group ------------------------------------------------------------------------------
    def getBackendName(self) -> str:
        return BACKEND

    def getRank(self) -> int:
        return self._rank

    def getSize(self) -> int:  # rank() and size() come here too, so recover() moves them
        return self._size

    def shutdown(self) -> None:
        """destroy_process_group(): this peer leaves the job (the others see a smaller group)."""
        self.comm.close()

    abort = shutdown

    # -- membership ----------------------------------------------------------------------------------------------
    def _gather_peers(self, want: int, deadline: Optional[float]) -> None:
        """Votes newcomers in until the group has ``want`` peers (the others do the same)."""
        self.comm.wait_for_peers(want, None if deadline is None else max(deadline - time.monotonic(), 1e-3))

    def _exchange_ranks(self) -> None:
        """All-gathers (wanted torch rank, already a member) of every peer. A new group's ranks must be 0..n-1
        once each; otherwise ranks are dealt densely in (newcomer, wanted rank, peer id) order, the same on every
        peer: the members that were there keep their order and come first, so rank 0 (whose parameters DDP
        broadcasts) is never a newcomer while any member is left."""
        comm = self.comm
        mine = np.array([self._rank, bool(self._by_peer)], dtype=np.int64)
        got = comm.all_gather(mine, tag=_RANK_TAG).tolist()
        peers = list(comm.last_info.peers)
        wanted = [w for w, _ in got]
        if not any(member for _, member in got):
            if sorted(wanted) != list(range(len(peers))):
                raise InvalidArgumentError(f"init_process_group ranks must be 0..{len(peers) - 1}, once each; the "
                                           f"group's peers asked for {sorted(wanted)}")
        else:
            order = sorted((not member, w, p) for (w, member), p in zip(got, peers))
            wanted = [order.index((not member, w, p)) for (w, member), p in zip(got, peers)]
        self._by_peer = dict(zip(peers, wanted))
        self._rank, self._size = self._by_peer[comm.peer_id], len(peers)

    def recover(self, world_size: Optional[int] = None, timeout: Optional[float] = None) -> tuple[int, int]:
        """Rebuilds the group after a lost peer; every member (and every newcomer's init_process_group) must
        take part. Waits for this group's operations in flight to end (their errors are theirs), admits
        waiting peers, waits until the group has ``world_size`` peers when given, and deals torch ranks again:
        the members that were there first, densely in their old order (rank 0 stays a peer that holds the
        training state), then newcomers in the order of the ranks they asked for. Returns (rank, size).

        Raises:
            PCCLTimeoutError: ``timeout`` seconds passed first (operations still in flight, peers missing).
            PeerLostError: another peer was lost meanwhile: call it again.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            handles, self._handles = self._handles, []
        for h in handles:
            try:
                h.wait(None if deadline is None else max(deadline - time.monotonic(), 1e-3))
            except PCCLTimeoutError:
                if not h.done():  # this wait ran out, not the operation: keep tracking the rest
                    with self._lock:
                        self._handles = [x for x in handles if not x.done()] + self._handles
                    raise
            except Exception:  # noqa: BLE001  the operation's own error: its Work reports it
                pass
        self.comm.update_topology(timeout=None if deadline is None else max(deadline - time.monotonic(), 1e-3))
        if world_size is not None:
            self._gather_peers(world_size, deadline)
        self._exchange_ranks()
        return self._rank, self._size

    # -- plumbing ------------------------------------------------------------------------------------------------
    def _submit(self, what: str, run: Callable[[int], Any], outputs: list) -> Work:
        """Runs ``run(tag)`` (one blocking collective of the communicator, checked with :meth:`_info`) on the
        communicator's pool with its next automatic tag; the Work completes when ``run`` returns or raises."""
        work = Work(outputs)

        def call(tag: int) -> tuple:
            try:
                run(tag)
            except BaseException as e:
                work._finish(e)
                raise
            work._finish(None)
            return outputs, self.comm.last_info  # last_info: this pool thread's own call

        work._handle = handle = self.comm.submit(call, what=what)
        with self._lock:
            self._handles = [h for h in self._handles if not h.done()] + [handle]
        return work

    def _info(self, what: str) -> Any:
        """This thread's last operation's info, once its peers are known to be this torch group's."""
        info = self.comm.last_info
        if set(info.peers) != set(self._by_peer):
            raise PeerLostError(f"{what} ran on {info.world_size} peers, not this torch group's {self._size}: the "
                                "group changed (a peer was lost); call dist.group.WORLD.recover() on every peer")
        return info

    def _torch_order(self, peers: Any) -> list[int]:
        """The torch rank of each peer of a ring order (PeerLostError for a peer this group does not know)."""
        try:
            return [self._by_peer[p] for p in peers]
        except KeyError:
            raise PeerLostError("the group changed since its ranks were exchanged: call recover()") from None

    @staticmethod
    def _timeout(opts: Any) -> Optional[float]:
        t = getattr(opts, "timeout", None)
        return t.total_seconds() if isinstance(t, timedelta) and t.total_seconds() > 0 else None

    @staticmethod
    def _one(tensors: list, what: str) -> Any:
        if len(tensors) != 1:
            raise InvalidArgumentError(f"{what}: the pccl_arrays backend takes one tensor per process, not "
                                       f"{len(tensors)}")
        return tensors[0]

    @staticmethod
    def _op(opts: Any) -> str:
        op = opts.reduceOp.op if opts is not None else dist.ReduceOp.SUM
        if op not in _OPS:
            raise InvalidArgumentError(f"the pccl_arrays backend does not support {op} (only SUM, AVG, PRODUCT, "
                                       "MIN, MAX)")
        return _OPS[op]

    # -- collectives ---------------------------------------------------------------------------------------------
    def allreduce(self, tensors: list, opts: Any = None) -> Work:
        t, op, timeout = self._one(tensors, "allreduce"), self._op(opts), self._timeout(opts)

        def run(tag: int) -> None:
            self.comm.all_reduce(t, op, out=t, tag=tag, timeout=timeout)
            self._info("allreduce")

        return self._submit("allreduce", run, [t])

    def broadcast(self, tensors: list, opts: Any = None) -> Work:
        t, timeout = self._one(tensors, "broadcast"), self._timeout(opts)
        src = opts.rootRank if opts is not None else 0
        peer = next((p for p, r in self._by_peer.items() if r == src), None)
        if peer is None:
            raise InvalidArgumentError(f"broadcast: src {src} is not a rank of this group of {self._size}")

        def run(tag: int) -> None:
            ring = self.comm.ring()  # the root's position now, as the communicator resolves it
            if peer not in ring:
                raise PeerLostError(f"broadcast: the peer of src rank {src} left the group; call recover()")
            self.comm.broadcast(t, root=ring.index(peer), out=t, tag=tag, timeout=timeout)
            self._info("broadcast")

        return self._submit("broadcast", run, [t])

    def allgather(self, output_tensors: list, input_tensors: list, opts: Any = None) -> Work:
        x, outs = self._one(input_tensors, "allgather"), self._one(output_tensors, "allgather")
        if len(outs) != self._size:
            raise InvalidArgumentError(f"all_gather: tensor_list needs {self._size} tensors, not {len(outs)}")
        timeout = self._timeout(opts)

        def run(tag: int) -> None:
            rows = self.comm.all_gather(x, tag=tag, timeout=timeout)  # in ring order
            for row, rank in enumerate(self._torch_order(self._info("all_gather").peers)):
                outs[rank].copy_(rows[row].reshape(outs[rank].shape))

        return self._submit("all_gather", run, [outs])

    def all_gather_single(self, output: Any, input: Any, opts: Any = None) -> Work:
        """all_gather_into_tensor: ``output`` holds the size's inputs one after another, in torch rank order."""
        n, timeout = self._size, self._timeout(opts)
        if output.numel() != n * input.numel():
            raise InvalidArgumentError(f"all_gather_into_tensor: output needs {n} x {input.numel()} elements, not "
                                       f"{output.numel()}")
        if not output.is_contiguous():
            raise InvalidArgumentError("all_gather_into_tensor: output must be contiguous")

        def run(tag: int) -> None:
            if self._torch_order(self.comm.ring()) == list(range(n)):  # ring order is torch order: rows land in place
                self.comm.all_gather(input, out=output.view((n,) + tuple(input.shape)), tag=tag, timeout=timeout)
                self._info("all_gather_into_tensor")
                return
            rows, flat = self.comm.all_gather(input, tag=tag, timeout=timeout), output.view(n, -1)
            for row, rank in enumerate(self._torch_order(self._info("all_gather_into_tensor").peers)):
                flat[rank].copy_(rows[row].reshape(-1))

        return self._submit("all_gather_into_tensor", run, [output])

    _allgather_base = all_gather_single

    def reduce_scatter_single(self, output: Any, input: Any, opts: Any = None) -> Work:
        """reduce_scatter_tensor: torch rank r gets the reduction of chunk r of ``input`` (dim 0 cut in size)."""
        n, op, timeout = self._size, self._op(opts), self._timeout(opts)
        if input.numel() != n * output.numel():
            raise InvalidArgumentError(f"reduce_scatter_tensor: input needs {n} x {output.numel()} elements, not "
                                       f"{input.numel()}")
        rows = input.reshape(n, -1)

        def run(tag: int) -> None:
            ring = self.comm.ring()
            order = self._torch_order(ring)  # ring position k receives chunk order[k]
            src = rows if order == list(range(n)) else rows[order]
            got = self.comm.reduce_scatter(src, op, tag=tag, timeout=timeout)
            if list(self._info("reduce_scatter_tensor").peers) != ring:  # the chunks were cut for another order
                raise PeerLostError("reduce_scatter_tensor: the ring changed under the operation; call recover()")
            output.copy_(got.reshape(output.shape))

        return self._submit("reduce_scatter_tensor", run, [output])

    _reduce_scatter_base = reduce_scatter_single

    def reduce_scatter(self, output_tensors: list, input_tensors: list, opts: Any = None) -> Work:
        """The list form: input_tensors[0][r] is the chunk for torch rank r."""
        out, chunks = self._one(output_tensors, "reduce_scatter"), self._one(input_tensors, "reduce_scatter")
        if len(chunks) != self._size:
            raise InvalidArgumentError(f"reduce_scatter: input_list needs {self._size} tensors, not {len(chunks)}")
        return self.reduce_scatter_single(out, torch.stack([c.reshape(out.shape) for c in chunks]), opts)

    def barrier(self, opts: Any = None) -> Work:
        timeout = self._timeout(opts)

        def run(tag: int) -> None:
            self.comm.barrier(tag=tag, timeout=timeout)
            self._info("barrier")

        return self._submit("barrier", run, [])


def retryable(error: BaseException) -> bool:
    """Whether an error of this backend's collectives means "call recover() and go on": a retryable PCCLError
    (PeerLostError, TooFewPeersError), also when DDP's C++ reducer passed it on as a RuntimeError, which keeps
    only its text."""
    if isinstance(error, PCCLError):
        return error.retryable
    return isinstance(error, RuntimeError) and any(f"{c.__name__}: " in str(error)
                                                   for c in (PeerLostError, TooFewPeersError))


def register() -> None:
    """Registers the backend and the pccl:// init method with torch (done once, on import)."""
    try:
        dist.register_rendezvous_handler(SCHEME, _rendezvous)
    except RuntimeError:  # registered already (this module was loaded twice)
        pass
    dist.Backend.register_backend(BACKEND, _create, extended_api=True, devices=["cpu"])


register()

__all__ = ["BACKEND", "ENV_MASTER", "Options", "ProcessGroup", "SCHEME", "Work", "register", "retryable"]
