"""The Communicator's collectives beside all-reduce, and their async forms (docs/collectives.md).

A mixin of :class:`~pccl_arrays.Communicator`, kept apart so that communicator.py stays readable: each method
checks nothing itself and runs one call of collectives.py through the communicator's ``_collective`` (blocking)
or ``_started`` (on its pool, with a tag of its own).
"""

from __future__ import annotations

from typing import Any, Optional

from . import collectives as _collectives
from .in_flight import AllReduceHandle as _Handle


class CollectiveMethods:
    def broadcast(self, x: Any, root: int = 0, *, out: Any = None, tag: int = 0,
                  timeout: Optional[float] = None) -> Any:
        """Every peer of the group gets the array of the peer at rank ``root`` (docs/collectives.md).

        Args:
            x: the root's data; on the other peers an array of the same shape and dtype (its values are not
                read). Any framework and dtype :meth:`all_reduce` takes.
            root: a rank: the peer at ``ring()[root]``.
            out: None for a new array, ``x`` itself for in place (torch, NumPy, CuPy), or another mutable array
                of x's shape and dtype.
            tag, timeout: as for :meth:`all_reduce`.
        Returns:
            the root's array, bit for bit, on every peer (``out`` when given).
        Raises:
            PeerLostError: a peer failed, or the root is no longer in the group; nothing was written; retry
                (after update_topology(), to choose a root of the new group).
            OperationMismatchError: the peers named different roots, shapes or dtypes, or another collective.
            PCCLTimeoutError, TooFewPeersError, KeyboardInterrupt: as for :meth:`all_reduce`.
        """
        return self._collective(_collectives.broadcast, x, root, out, tag, timeout)[0]

    def all_gather(self, x: Any, *, out: Any = None, quantization=None, tag: int = 0,
                   timeout: Optional[float] = None) -> Any:
        """Every peer's ``x``, stacked in ring order: a new array of shape ``(world_size, *x.shape)``
        whose row r came from the peer at rank r (``last_info.peers[r]``).

        Every peer must pass the same shape and dtype. ``out``: a mutable array of that shape (not x).
        ``quantization`` (floating dtypes; as for :meth:`all_reduce`): every peer's x travels as 8- or 4-bit blocks
        and every row, this peer's too, is decoded from them, so all peers hold the same result.
        Raises as :meth:`broadcast` (PeerLostError also when the group changed since this peer last saw it:
        the retry is sized from the new group).
        """
        return self._collective(_collectives.all_gather, x, out, tag, timeout, quantization)[0]

    def reduce_scatter(self, x: Any, op: str = "sum", *, out: Any = None, quantization=None, tag: int = 0,
                       timeout: Optional[float] = None) -> Any:
        """Reduces ``x`` over the group like :meth:`all_reduce`, but each peer gets only its chunk: the rows
        of x's first axis that ``numpy.array_split(x, world_size)[rank]`` would hold.

        Args:
            x: an array of at least one dimension, the same shape and dtype on every peer.
            op: as for :meth:`all_reduce`.
            out: None, or a mutable array of the chunk's shape (not x).
            quantization: as for :meth:`all_reduce` (sum and avg of floating dtypes): the others' chunks travel
                as 8- or 4-bit blocks; the owner adds its own chunk exactly.
            tag, timeout: as for :meth:`all_reduce`.
        Raises as :meth:`broadcast`.
        """
        return self._collective(_collectives.reduce_scatter, x, op, out, tag, timeout, quantization)[0]

    def barrier(self, *, tag: int = 0, timeout: Optional[float] = None) -> None:
        """Returns once every peer of the group has called it (a collective with no data). A peer that is lost or
        leaves before calling it no longer belongs to the group, so the others pass without it, as every
        collective runs among whoever is left.

        Raises:
            PCCLTimeoutError: some peers did not call it within ``timeout`` (named in the message).
            TooFewPeersError: fewer than ``min_world_size`` peers are left.
        """
        self._collective(_collectives.barrier, tag, timeout)

    def broadcast_async(self, x: Any, root: int = 0, *, out: Any = None, tag: Optional[int] = None,
                        timeout: Optional[float] = None) -> "_Handle":
        """:meth:`broadcast`, started at once; ``handle.wait()`` gives the result (tags as for
        :meth:`all_reduce_async`)."""
        return self._started(_collectives.broadcast, tag, x, root, out, timeout=timeout)

    def all_gather_async(self, x: Any, *, out: Any = None, quantization=None, tag: Optional[int] = None,
                         timeout: Optional[float] = None) -> "_Handle":
        """:meth:`all_gather`, started at once; ``handle.wait()`` gives the result."""
        return self._started(_collectives.all_gather, tag, x, out, timeout=timeout, quantization=quantization)

    def reduce_scatter_async(self, x: Any, op: str = "sum", *, out: Any = None, quantization=None,
                             tag: Optional[int] = None, timeout: Optional[float] = None) -> "_Handle":
        """:meth:`reduce_scatter`, started at once; ``handle.wait()`` gives the result."""
        return self._started(_collectives.reduce_scatter, tag, x, op, out, timeout=timeout,
                             quantization=quantization)

    def barrier_async(self, *, tag: Optional[int] = None, timeout: Optional[float] = None) -> "_Handle":
        """:meth:`barrier`, started at once; ``handle.wait()`` returns None once every peer has called it."""
        return self._started(_collectives.barrier, tag, timeout=timeout)
