"""A peer's communicator: join the job, vote on the topology, all-reduce arrays."""

from __future__ import annotations

import dataclasses
import threading
import time
import warnings
import weakref
from typing import Any, Optional, Sequence, Union

import numpy as np

from . import _core, arrays, core_calls
from .collective_methods import CollectiveMethods
from . import secret as _secret
from . import in_flight as _in_flight
from . import quantization as _quantization
from . import shared_state as _shared_state
from . import tree as _tree
from .quantization import Quantization
from . import feedback as _feedback
from .dtypes import dtype_code, op_code
from .call_args import call_args as _call_args, seconds as _seconds, target_of as _target_of
from .call_args import check_tag, timeout_arg as _timeout_arg
from .errors import CommunicatorStateError, InvalidArgumentError, PCCLError, PCCLTimeoutError

_DEFAULTS = _core.DEFAULTS  # the core's defaults, written once (cpp/peer/communicator.hpp, cpp/master/state.hpp)
DEFAULT_OP_TIMEOUT = _DEFAULTS["op_timeout"]  # 30 minutes to wait for the others to start (torch's default too)
DEFAULT_BUFFER_POOL_BYTES = 1 << 30


@dataclasses.dataclass(frozen=True)
class AllReduceInfo:
    """What one all-reduce did."""

    world_size: int  #: peers in the ring that ran the operation
    bytes_sent: int  #: bytes this peer wrote to its data connections (frame headers included)
    bytes_received: int  #: bytes this peer read from its data connections
    seconds: float  #: wall time from the start announcement to the commit
    stripes: int  #: connections the operation was striped over
    op_id: int  #: the master's id of the operation
    rank: int = 0  #: this peer's position in the operation's ring order (chunk ``rank`` is the one it owns)
    peers: tuple = ()  #: the operation's peer ids in ring order (all_gather's rows come in this order)


def _master_addresses(master) -> str:
    """The master argument as the core takes it: "host:port" or "primary,standby,..."."""
    if isinstance(master, (list, tuple)):
        if not master or not all(isinstance(a, str) and a.strip() and "," not in a for a in master):
            raise InvalidArgumentError(f"master must be 'host:port' or a non-empty list of them, not {master!r}")
        return ",".join(a.strip() for a in master)
    if not isinstance(master, str) or not all(a.strip() for a in master.split(",")):
        raise InvalidArgumentError(f"master must be 'host:port', 'primary:port,standby:port' or a list, not {master!r}")
    return master


class Communicator(CollectiveMethods):
    """One peer's handle on a pccl_arrays job.

    Args:
        master: ``host:port`` of the master; or several, primary first, then standbys (a list, or one string
            separated by commas): peers use the first that answers (docs/master.md).
        peer_group: operations run among peers of the same group; admission votes are global.
        connections: k, the TCP connections to the ring successor; one operation is striped over all of them.
        listen: ``host:port`` for the data port (port 0: the OS chooses). None: no data port at all; this peer
            dials every connection it has (behind NAT or a firewall, docs/nat.md).
        inbound: False says that no other peer can dial this one (same as ``listen=None``). Left True, the master
            finds out by dialing the data port once at admission, and a peer it cannot reach takes part anyway,
            dialing all its connections.
        advertise: the host (or ``host:port``) other peers should dial, when it differs from the address the
            master sees (NAT, port forwarding, a relay). Default: this peer's address toward the master.
        connect_timeout: seconds for TCP connects and for the master's welcome.
        heartbeat_interval: seconds between heartbeats to the master.
        master_timeout: seconds of silence from the master before it counts as lost.
        master_grace: seconds a lost master is looked for (its address, then the next ones) before
            MasterUnreachableError; meanwhile an operation in flight raises PeerLostError and later calls wait for
            the master to come back (docs/master.md). 0: a lost master ends the communicator at once.
        data_timeout: seconds without a byte of progress on a data connection before the operation fails.
        piece_bytes: size of the pieces an operation is pipelined in.
        op_timeout: default bound, in seconds, on waiting for the other peers to *start* a collective
            (all-reduce, sync, update_topology); each call may pass its own ``timeout``. None: no bound.
        min_world_size: the smallest group a collective may run with; below it every peer gets
            TooFewPeersError (never a result computed alone), and update_topology() waits for newcomers.
        secret: the run's secret, the master's (bytes or str; default: the ``PCCL_ARRAYS_SECRET`` environment
            variable, if set). A missing or different secret on either side is an AuthenticationError at
            connect(); whether the run encrypts is the master's choice (docs/security.md).
        buffer_pool_bytes: results returned as new arrays (and the packed buffers of all_reduce_tree) come from
            a pool that takes their memory back when the arrays die, so the next result of a similar size skips
            allocating and faulting in fresh pages. The pool keeps at most this many bytes nobody uses
            (default 1 GiB; 0: no pool) and frees them at :meth:`close`. Arrays you hold are never counted.
        metrics: ``host:port`` on which to serve this peer's Prometheus metrics at ``/metrics`` (its committed
            and failed collectives, their latency, the bytes per neighbour), read-only, from a thread of its own
            until :meth:`close` (docs/monitoring.md; port 0: the OS chooses, see :attr:`metrics_address`).

    Used as a context manager (``with Communicator(...) as comm:``) it connects on entry and closes on exit.
    """

    def __init__(
        self,
        master: Union[str, Sequence[str]],
        peer_group: int = 0,
        connections: int = _DEFAULTS["connections"],
        *,
        listen: Optional[str] = "0.0.0.0:0",
        advertise: Optional[str] = None,
        inbound: bool = True,
        connect_timeout: float = _DEFAULTS["connect_timeout"],
        heartbeat_interval: float = _DEFAULTS["heartbeat_interval"],
        master_timeout: float = _DEFAULTS["master_timeout"],
        master_grace: float = _DEFAULTS["master_grace"],
        data_timeout: float = _DEFAULTS["data_timeout"],
        piece_bytes: int = _DEFAULTS["piece_bytes"],
        op_timeout: Optional[float] = DEFAULT_OP_TIMEOUT,
        min_world_size: int = 1,
        secret: _secret.Secret = None,
        buffer_pool_bytes: int = DEFAULT_BUFFER_POOL_BYTES,
        metrics: Optional[str] = None,
    ):
        master = _master_addresses(master)
        if not isinstance(master_grace, (int, float)) or isinstance(master_grace, bool) or not master_grace >= 0:
            raise InvalidArgumentError(f"master_grace must be a number of seconds >= 0, not {master_grace!r}")
        if not isinstance(peer_group, int) or peer_group < 0 or peer_group >= 2**32:
            raise InvalidArgumentError(f"peer_group must be an int in [0, 2**32), not {peer_group!r}")
        if not isinstance(connections, int) or not 1 <= connections <= 1024:
            raise InvalidArgumentError(f"connections must be an int in [1, 1024], not {connections!r}")
        if not isinstance(min_world_size, int) or isinstance(min_world_size, bool) or min_world_size < 1:
            raise InvalidArgumentError(f"min_world_size must be an int >= 1, not {min_world_size!r}")
        if op_timeout is not None and not (isinstance(op_timeout, (int, float)) and op_timeout > 0):
            raise InvalidArgumentError(f"op_timeout must be a positive number of seconds or None, not {op_timeout!r}")
        if not isinstance(inbound, bool):
            raise InvalidArgumentError(f"inbound must be True or False, not {inbound!r}")
        if listen is not None and (not isinstance(listen, str) or not listen):
            raise InvalidArgumentError(f"listen must be 'host:port' or None, not {listen!r}")
        if not inbound or listen is None:
            listen = ""  # the core's "no data port"
            if advertise:
                raise InvalidArgumentError("advertise= names an address others dial, and this peer has no data port "
                                           "(listen=None or inbound=False)")
        if metrics is not None:
            from .http_server import parse_listen

            parse_listen(metrics, "metrics")  # a bad address fails before anything starts
        if not isinstance(buffer_pool_bytes, int) or isinstance(buffer_pool_bytes, bool) or buffer_pool_bytes < 0:
            raise InvalidArgumentError(f"buffer_pool_bytes must be an int >= 0, not {buffer_pool_bytes!r}")
        self._core = core_calls.CoreCalls(_core.Communicator(
            master=master, peer_group=peer_group, connections=connections, listen=listen, advertise=advertise or "",
            connect_timeout=connect_timeout, heartbeat_interval=heartbeat_interval, master_timeout=master_timeout,
            master_grace=float(master_grace), data_timeout=data_timeout, piece_bytes=piece_bytes,
            op_timeout=0.0 if op_timeout is None else float(op_timeout), min_world=min_world_size,
            secret=_secret.resolve(secret),
        ))  # collectives' failures pass through it (core_calls.py)
        self.min_world_size = min_world_size
        self._pool = _core.BufferPool(buffer_pool_bytes)
        self._local = threading.local()  # each thread's last_info
        self._concurrency = _in_flight.Concurrency(self, weakref.WeakMethod(self._abandon))
        self._metrics = self._metrics_http = None
        if metrics is not None:
            from . import metrics as _metrics
            from . import status_page

            self._metrics = _metrics.PeerMetrics()
            self._core.on_failure = self._metrics.failed_one
            self._metrics_http = status_page.serve_peer(self, self._metrics, metrics)
            weakref.finalize(self, self._metrics_http.stop)  # dropped without close(): the server goes too
        _in_flight.track_open(self)

    # -- membership ---------------------------------------------------------------------------------------------
    def connect(self, timeout: Optional[float] = None) -> "Communicator":
        """Joins the job and waits to be admitted (at the other peers' next :meth:`update_topology`).

        A master that is not up yet is retried with backoff for ``connect_timeout`` seconds. On a communicator
        that is already connected (``with Communicator(...)`` connects on entry) it does nothing.

        Args:
            timeout: seconds to wait for admission; None waits as long as the master is alive.

        Raises:
            MasterUnreachableError: the master cannot be reached (after retries) or stops answering.
            NetworkError: the master could not connect to this peer's data address (open the port to the other
                peers or pass ``advertise=``); nobody else noticed.
            PCCLTimeoutError: not admitted within ``timeout``.
            KeyboardInterrupt: Ctrl-C; the communicator has left the job.
        """
        if not self._core.connected:
            self._core.connect(-1.0 if timeout is None else _seconds(timeout, "timeout"))
        return self

    def update_topology(self, timeout: Optional[float] = None) -> None:
        """Collective over all accepted peers: admits pending peers and rewires the ring.

        The vote completes when every accepted peer is inside update_topology(). If a peer of this group has
        already started a collective (this peer is a step behind, as a newcomer is on its first call), it returns
        at once with the current ring, and this peer goes on to that collective. While the group would have
        fewer than ``min_world_size`` peers, it waits for newcomers.

        Args:
            timeout: seconds to wait for the others (default: the communicator's ``op_timeout``).
        Raises:
            PCCLTimeoutError: the vote did not complete in time; the message names the peers that did not come.
            CommunicatorStateError: async operations are in flight (wait for their handles first).
            KeyboardInterrupt: Ctrl-C; the communicator has left the job.
        """
        if self._concurrency.in_flight():
            raise CommunicatorStateError(f"update_topology() while {self._concurrency.in_flight()} async "
                                         "all-reduce(s) are in flight: wait for their handles first")
        self._concurrency.restart_auto_tags()
        self._core.update_topology(_timeout_arg(timeout))

    def optimize_topology(self, timeout: Optional[float] = None) -> int:
        """Collective over the group: measures the links the master has not measured yet and rewires the ring in
        the order that maximizes its slowest link's bandwidth (docs/topology.md).

        Every peer of the group must call it, as for an all-reduce. The first call probes every ordered pair of
        peers (in rounds where every peer sends one probe and receives one, each stopping once its estimate is
        stable, about 0.3-1 s); later calls probe only the links of peers admitted since, and cost nothing when
        every link is known. The new order takes effect from the next collective, on every peer at once. Call it
        once joins have settled, or every K steps.

        Args:
            timeout: seconds to wait for the others to call it (default: the communicator's ``op_timeout``).
        Returns:
            how many links this peer measured (the probes it received).
        Raises:
            PeerLostError: a peer died or left while probing; retry (links already reported are kept).
            PCCLTimeoutError: the others did not call it in time; the message names them.
            OperationMismatchError: others started another collective instead.
            KeyboardInterrupt: Ctrl-C; the communicator has left the job.
        """
        if self._concurrency.in_flight():
            raise CommunicatorStateError(f"optimize_topology() while {self._concurrency.in_flight()} async "
                                         "all-reduce(s) are in flight: wait for their handles first")
        self._concurrency.restart_auto_tags()
        return self._core.optimize_topology(_timeout_arg(timeout))

    def wait_for_peers(self, n: int, timeout: Optional[float] = None) -> None:
        """Votes waiting peers in (:meth:`update_topology`, whenever one is pending) until this peer's group has
        ``n`` peers: how peers started together admit each other. Every accepted peer of the group must take
        part (call it, or update_topology()), as for any vote.

        Raises:
            PCCLTimeoutError: the group still has fewer than ``n`` peers after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + _seconds(timeout, "timeout")
        while self.world_size < n:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise PCCLTimeoutError(f"the group has {self.world_size} of {n} peers; the others did not join "
                                       f"within {timeout} s")
            if self.are_peers_pending():  # every accepted peer sees a pending one, and votes
                self.update_topology(timeout=left)
            else:
                time.sleep(0.005)

    def ring(self) -> list[int]:
        """Peer ids of this peer's group in ring order, as of the last topology change or operation: rank r is
        ``ring()[r]``."""
        return self._core.ring_ids()

    def are_peers_pending(self) -> bool:
        """Whether peers wait for admission (so an :meth:`update_topology` would admit someone)."""
        return self._core.pending_peers() > 0

    @property
    def world_size(self) -> int:
        """Peers in this peer's group, the group its collectives run over (and ``avg`` divides by), as of the
        last topology change or operation."""
        return self._core.group_world_size

    @property
    def total_world_size(self) -> int:
        """Accepted peers of all groups, as of the last topology update."""
        return self._core.world_size

    @property
    def group_world_size(self) -> int:
        """Deprecated: :attr:`world_size` (which now means the group; the peers of all groups are
        :attr:`total_world_size`)."""
        warnings.warn("Communicator.group_world_size is deprecated: use world_size (the group's peers)",
                      DeprecationWarning, stacklevel=2)
        return self._core.group_world_size

    @property
    def last_info(self) -> Optional[AllReduceInfo]:
        """What the last collective this thread called did (each thread sees its own calls; an async
        operation's info is its handle's ``info``). None before the first."""
        return getattr(self._local, "info", None)

    @property
    def rank(self) -> int:
        """This peer's position in :meth:`ring`: the rank broadcast's ``root`` names and reduce_scatter's chunk.
        It changes only when the group does (update_topology(), optimize_topology(), or a lost peer leaving
        the ring of the next operation)."""
        return self._core.group_rank

    @property
    def peer_id(self) -> int:
        return self._core.peer_id

    @property
    def data_address(self) -> str:
        """``host:port`` other peers dial to reach this peer's data port."""
        return self._core.data_address

    @property
    def data_port(self) -> int:
        """The port this peer's data socket listens on (it differs from ``data_address`` behind a relay or NAT);
        0 without a data port."""
        return self._core.data_port

    @property
    def inbound(self) -> bool:
        """Whether other peers can dial this one, as the master found at admission (docs/nat.md). False: it dials
        all its connections, and one to another such peer goes through a relay."""
        return self._core.inbound

    def relay_stats(self) -> dict:
        """Peers behind NAT (docs/nat.md): ``inbound``; ``relayed_connections``, the connections this peer opened
        through a relay (as either end) and ``via_master``, those through the master's; ``relay_pipes``,
        ``relay_open``, ``relay_bytes`` and ``relay_unmatched``: what this peer's data port relayed for others."""
        return self._core.relay_stats()

    def connection_stats(self) -> list:
        """Per pooled connection: peer, index, direction ('send' or 'recv') and bytes moved (diagnostics)."""
        return self._core.connection_stats()

    def close(self) -> None:
        """Leaves the job gracefully: the others see a smaller world, not an error.

        Returns within about a second even with operations in flight: they stop at once and raise
        CommunicatorStateError (in their threads, or from their handles); to the other peers this peer is lost.
        The communicator's threads and buffers go now (an unwinding operation's when it ends).
        """
        self._core.close()
        self._after_leaving()

    def _abandon(self, why: str) -> None:
        """Leaves the job after a KeyboardInterrupt outside the core (in ``handle.wait()``)."""
        self._core.abandon(why)
        self._after_leaving()

    @property
    def metrics_address(self) -> Optional[str]:
        """``host:port`` of this peer's ``/metrics`` while it serves (``metrics=``), else None."""
        return None if self._metrics_http is None else self._metrics_http.address

    def _after_leaving(self) -> None:
        if self._metrics_http is not None:
            self._metrics_http.stop()
            self._metrics_http = None
        self._concurrency.shutdown()  # the operations in flight have already been stopped by the core
        self._pool.release()
        _in_flight.untrack_open(self)

    def __enter__(self) -> "Communicator":
        if not self._core.connected:
            self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- shared state -------------------------------------------------------------------------------------------
    def sync_shared_state(self, state: "_shared_state.SharedState", strategy: str = "enforce_popular", *,
                          timeout: Optional[float] = None) -> "_shared_state.SyncInfo":
        """Collective over the group: makes ``state`` bit-identical to the group's (docs/shared_state.md).

        Every peer of the group must call it at the same point of its loop (a peer that has just connected
        may call it right after connect(), or run the same loop as the others from update_topology(), which returns at
        once when the others have already started this sync).

        Args:
            state: the :class:`~pccl_arrays.SharedState` to sync; entries that differ from the elected content
                are overwritten (mutable arrays in place, JAX arrays replaced) and ``state.revision`` becomes
                the group's.
            strategy: ``"enforce_popular"`` (default: take part in the election, adopt the winner),
                ``"receive_only"`` (never offer content: a newcomer) or ``"send_only"`` (this peer's content
                must win, else SharedStateError; also how a checkpoint resumes a group whose state was lost).
            timeout: seconds to wait for the others to call it (default: the communicator's ``op_timeout``).
        Returns:
            a :class:`~pccl_arrays.SyncInfo`: the revision, the entries received, bytes sent and received (0 and
            0 when every peer already held the same state), bytes per source peer.
        Raises:
            SharedStateError: this peer was refused (different names, dtypes or shapes; revision ahead of the
                group by more than one; send-only without the group's state), or every peer that held the
                group's state is gone (the message names the last committed revision); its state is unchanged.
            TooFewPeersError: the group has fewer than ``min_world_size`` peers.
            PCCLTimeoutError: the others did not call it within ``timeout``; the message names them.
            PeerLostError: a peer failed during the transfer; nothing was changed anywhere; retry.
            OperationMismatchError: other peers called all_reduce instead.
            CommunicatorStateError: all-reduces are in flight on this peer (wait for their handles first).
        """
        if self._concurrency.in_flight():
            raise CommunicatorStateError(f"sync_shared_state() while {self._concurrency.in_flight()} async "
                                         "all-reduce(s) are in flight: wait for their handles first")
        self._concurrency.restart_auto_tags()
        return _shared_state.sync(self._core, state, strategy, _timeout_arg(timeout))

    # -- collectives --------------------------------------------------------------------------------------------
    def all_reduce(self, x: Any, op: str = "sum", out: Any = None, *, tag: int = 0, quantization=None,
                   return_info: bool = False, timeout: Optional[float] = None, feedback=None):
        """All-reduces ``x`` over the peers of this group.

        Args:
            x: a torch tensor (CPU or CUDA), JAX array (CPU or GPU), CuPy array or NumPy array of int8..uint64,
                float16, bfloat16 or float32/float64; any shape, any strides.
            op: ``"sum"``, ``"avg"`` (floating dtypes only), ``"prod"``, ``"max"`` or ``"min"``.
            out: None for a new array of x's framework and device, ``x`` itself for in place (torch, NumPy,
                CuPy; JAX arrays are immutable), or another mutable array of the same shape and dtype.
            tag: distinguishes operations; every peer of the group must use the same tag for the same operation.
            quantization: None, ``"minmax"`` / ``"zeropoint"`` / ``"minmax4"``, or a
                :class:`~pccl_arrays.Quantization` (block size, rounding, rotation): moves 8-bit (about 4x fewer
                bytes than float32) or 4-bit blocks (about 8x fewer) instead of the dtype, for sum and avg of
                floating arrays; every peer must use the same settings (docs/quantization.md).
            return_info: deprecated: read :attr:`last_info` after the call (``handle.info`` for async calls).
            timeout: seconds to wait for the other peers to start it (default: the communicator's
                ``op_timeout``); data-plane stalls are bounded by ``data_timeout`` separately.
            feedback: a :class:`~pccl_arrays.ErrorFeedback` (needs ``quantization``): sends ``x`` plus what
                quantizing this peer's last contribution lost, and keeps the new loss once the operation
                committed (docs/quantization.md, "Error feedback").
        Returns:
            the result (``out`` when given); its :class:`AllReduceInfo` is :attr:`last_info`.
        Raises:
            PeerLostError: a peer failed during the operation; ``x`` and ``out`` are unchanged; retry.
            TooFewPeersError: the group has fewer than ``min_world_size`` peers; nothing was changed.
            PCCLTimeoutError: some peers did not start it within ``timeout`` (named in the message).
            OperationMismatchError: peers started different operations (dtype, op, shape, quantization, or the
                packed tree's structure);
                nothing was changed.
            KeyboardInterrupt: Ctrl-C. While data moved, the operation was aborted on every peer (the others
                get PeerLostError) and this communicator stays usable; while waiting for the others to start,
                this communicator has left the job.
            UnsupportedDTypeError / InvalidArgumentError: bad input (also TypeError / ValueError).
        """
        if return_info:
            warnings.warn("all_reduce(return_info=True) is deprecated: read comm.last_info after the call",
                          DeprecationWarning, stacklevel=2)
        if feedback is not None:
            result = _feedback.all_reduce(self, x, op, out, feedback, Quantization.of(quantization), tag=tag,
                                          timeout=timeout)
            return (result, self.last_info) if return_info else result
        fw = arrays.framework_of(x)
        name = arrays.dtype_name_of(x)
        call = _call_args(x.shape, timeout)
        dcode, ocode = dtype_code(name), op_code(op, name)
        check_tag(tag)
        target = _target_of(x, out, fw)
        quant = Quantization.of(quantization)
        if quant is not None:
            quant.check_for(name, op)
        on_device = arrays.device_of(x, fw)[0] not in arrays.HOST_DEVICES
        if quant is not None and quant.on_device_path(on_device):
            result, info = _quantization.device_all_reduce(self._core, x, fw, dcode, ocode, op, target, tag, quant,
                                                           call)
            return self._finish(result, info, return_info)

        src, _host_x, host_fw, _ = arrays.compact_host_view(x, fw)
        if src.readonly and out is x:
            raise InvalidArgumentError("the output array is read-only; pass out=None for a new array")
        buf = None
        if target is not None and not on_device and (dst := arrays.host_view(target, fw)).compact:
            pass  # the result lands straight in the caller's memory (in place: the core keeps x until the commit)
        else:
            buf = arrays.new_host_buffer(src.shape, name, self._pool)
            dst = arrays.buffer_view(buf, name)
        if quant is None:
            info = self._core.all_reduce(input_ptr=src.ptr, output_ptr=dst.ptr, count=src.count, dtype=dcode, op=ocode,
                                         tag=tag, **call)
        else:
            info = _quantization.host_all_reduce(self._core, src, dst, dcode, ocode, tag, quant, call)
        return self._finish(arrays.deliver(buf, target, name, fw, host_fw, x), info, return_info)

    def _finish(self, result: Any, info: Any, return_info: bool):
        self._record(info)
        return (result, self.last_info) if return_info else result

    def _record(self, info: Any) -> AllReduceInfo:
        """Keeps the core's info of a call as this thread's :attr:`last_info`."""
        self._local.info = AllReduceInfo(info.world_size, info.bytes_sent, info.bytes_received, info.seconds,
                                         info.stripes, info.op_id, info.rank, tuple(info.peers))
        if self._metrics is not None:
            self._metrics.committed_one(info)
        return self._local.info

    def _collective(self, fn, *args, **kw) -> tuple[Any, AllReduceInfo]:
        """Runs one of collectives.py's calls on this communicator's core and pool; (result, info)."""
        result, info = fn(self._core, self._pool, *args, **kw)
        return result, self._record(info)

    def _started(self, fn, tag: Optional[int], *args, **kw) -> "_in_flight.AllReduceHandle":
        """One of collectives.py's calls on the pool, with ``tag`` (None: the next automatic one)."""
        return self._concurrency.submit_call(lambda t: self._collective(fn, *args, tag=t, **kw), tag, fn.__name__)

    def all_reduce_async(self, x: Any, op: str = "sum", out: Any = None, *, tag: Optional[int] = None,
                         quantization=None, timeout: Optional[float] = None) -> "_in_flight.AllReduceHandle":
        """Starts an all-reduce and returns at once; ``handle.wait()`` gives the result.

        Many may be in flight (tested with 16) while Python keeps computing. Every peer must start the same
        operations with the same tags; without ``tag`` a per-communicator counter assigns one, which agrees
        across peers when they start their async operations in the same order since the last
        :meth:`update_topology` or :meth:`sync_shared_state` (where the counter restarts, so that newcomers agree). Do not touch ``x`` (or ``out``)
        until the handle is done. ``update_topology()`` refuses to run while operations are in flight.

        ``timeout`` bounds the wait for the others to start it, as for :meth:`all_reduce`; ``handle.wait(t)``
        bounds the caller's wait (PCCLTimeoutError) without touching the operation. Error feedback with an
        async call: send ``y = ef.compensate(g)`` and call ``ef.update(y, quantization)`` once ``wait()``
        returned (:class:`~pccl_arrays.ErrorFeedback`).

        Raises:
            InvalidArgumentError: the tag is already in flight on this communicator.
        """
        return self._concurrency.submit(x, op, out, tag, quantization, timeout)

    def submit(self, call, *, tag: Optional[int] = None, what: str = "collective") -> "_in_flight.AllReduceHandle":
        """Runs ``call(tag)`` on this communicator's threads, as the ``*_async`` methods do, and returns its
        handle: for adapters that wrap one or more blocking collectives (each called with ``tag``, the next
        automatic one unless given) in work of their own, such as the torch.distributed backend. ``call``
        returns ``(result, info)``; ``handle.wait()`` gives the result, ``handle.info`` the info, and
        ``what`` names the call in errors."""
        return self._concurrency.submit_call(call, tag, what)

    def all_reduce_many(self, arrays, op: str = "sum", *, out=None, max_in_flight: int = 4, retries: int = 3,
                        tag_base: Optional[int] = None, quantization=None, timeout: Optional[float] = None,
                        outs=None) -> list:
        """All-reduces every array of a list, ``max_in_flight`` at a time, retrying the ones a lost peer
        failed (``retries`` times each, on the smaller ring) without redoing those that committed.

        ``out``: None, or a list with one entry per array, each as :meth:`all_reduce`'s ``out`` (the array
        itself for in place). ``outs`` is its deprecated old name. Array i is reduced with tag ``tag_base + i``;
        without ``tag_base`` the tags are the next automatic ones (as for :meth:`all_reduce_async`), so every
        peer must issue its many() and async calls in the same order.

        Returns:
            the results in order; each one committed on every peer of its ring.
        Raises:
            the first non-retryable error, or a retryable one after ``retries`` attempts of the same array.
        """
        if outs is not None:
            warnings.warn("all_reduce_many(outs=) is deprecated: pass out=", DeprecationWarning, stacklevel=2)
            if out is not None:
                raise InvalidArgumentError("pass out= (outs= is its deprecated old name), not both")
            out = outs
        return self._concurrency.many(list(arrays), op, out, max_in_flight, retries, tag_base, quantization, timeout)

    def all_reduce_tree(self, tree: Any, op: str = "sum", *, out: Any = None, quantization=None, tag: int = 0,
                        timeout: Optional[float] = None, inplace: bool = False) -> Any:
        """All-reduces every leaf of a pytree: one operation per dtype, leaves packed into one buffer each.

        Args:
            tree: a JAX pytree, or nested dicts / OrderedDicts / lists / tuples / namedtuples of torch, NumPy or
                CuPy arrays (mixed dtypes and frameworks allowed); every peer must pass the same structure,
                shapes and dtypes, else every peer gets OperationMismatchError. Flattening order: dicts by sorted
                key, OrderedDicts in their own order, sequences by position (docs/arrays.md).
            op: as for :meth:`all_reduce` (``avg`` needs every leaf to be floating).
            out: None, or ``tree`` itself: also write the results into its mutable leaves (torch, NumPy, CuPy),
                after every dtype group has committed; JAX leaves are always replaced. (``inplace=True`` is its
                deprecated old form.)
            quantization: as for :meth:`all_reduce` (op ``sum`` or ``avg``); it applies to the floating leaves,
                and integer leaves are reduced exactly.
            tag, timeout: as for :meth:`all_reduce`.
        Returns:
            a tree of the same structure holding the results, each leaf in its own framework and device.
        Raises:
            PeerLostError: nothing was written; retry the whole call.
            OperationMismatchError: the peers' trees differ (keys, order, leaf dtypes or shapes).
        """
        if inplace:
            warnings.warn("all_reduce_tree(inplace=True) is deprecated: pass out=tree", DeprecationWarning,
                          stacklevel=2)
            out = tree if out is None else out
        if out is not None and out is not tree:
            raise InvalidArgumentError("all_reduce_tree's out must be None or the tree itself (in place)")
        quant = Quantization.of(quantization)
        if quant is not None and op.lower() not in ("sum", "avg"):
            raise InvalidArgumentError(f"quantized all_reduce_tree is for sum and avg, not {op}")
        return _tree.all_reduce_tree(self._pool, self._reduce_buffers, tree, op, inplace=out is tree, tag=tag,
                                     timeout=timeout, quantization=quant)

    def _reduce_buffers(self, src, dst, name: str, op: str, tag: int, structure: tuple = (0, ""),
                        timeout: Optional[float] = None, quantization: Optional[Quantization] = None) -> None:
        """All-reduces one core-owned host buffer into another (used by all_reduce_tree); ``structure`` is the
        tree's (fingerprint, summary); ``quantization`` applies to floating dtypes only."""
        quant = quantization if quantization is not None and name in _quantization.FLOAT_DTYPES else None
        info = self._core.all_reduce(input_ptr=src.data, output_ptr=dst.data,
                                     count=int(np.prod(src.shape, dtype=np.int64)), dtype=dtype_code(name),
                                     op=op_code(op, name), tag=tag, structure=structure[0],
                                     structure_text=structure[1], host_quantized=quant is not None,
                                     **(quant.core_args if quant is not None else {}),
                                     **_call_args(src.shape, timeout))
        self._record(info)


__all__ = ["Communicator", "AllReduceInfo", "PCCLError"]
