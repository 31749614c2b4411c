"""The master's state machine (_core_testing.MasterState) with a fake clock, and helpers to play peers against it: the
harness of tests/test_master_*.py.

Every event returns the master's actions: ("send", conn, type, fields) or ("close", conn, reason). A newcomer's peer
id is its connection id (WELCOME carries it), so the tests name peers by the connection they use; a returning
peer (tests/test_master_takeover.py) keeps the id it reports, whatever its connection.
"""

from __future__ import annotations

from pccl_arrays import _core, _core_testing

# Error kinds carried in OP_REJECT / OP_ABORT (cpp/base/error.hpp, exported as _core.CODES).
_KINDS = _core.CODES["error_kind"]
INVALID_ARGUMENT, PEER_LOST, TOO_FEW_PEERS = _KINDS["invalid_argument"], _KINDS["peer_lost"], _KINDS["too_few_peers"]
MISMATCH, NETWORK, TIMEOUT, SHARED_STATE = _KINDS["mismatch"], _KINDS["network"], _KINDS["timeout"], _KINDS["shared_state"]
F32 = _core.CODES["dtype"]["float32"]

_DESC_FIELDS = {f[0] for f in _core_testing.schema()["structs"]["OpDesc"]}
DESC = {"count": 1024, "dtype": F32, "op": _core.CODES["op"]["sum"], "quant": 0}


def info(conn: int) -> dict:
    return {"id": conn, "host": f"10.0.0.{conn}", "port": 9000 + conn, "inbound": 1}


def ring_of(*conns: int) -> list[dict]:
    return [info(c) for c in conns]


def sends(actions, type_name: str | None = None) -> dict:
    """{conn: fields} of the frames of one type (asserting at most one per connection)."""
    out = {}
    for a in actions:
        if a[0] == "send" and (type_name is None or a[2] == type_name):
            assert a[1] not in out, f"two {type_name} frames to {a[1]}: {actions}"
            out[a[1]] = a[3]
    return out


def types(actions) -> list[tuple]:
    """(kind, conn, type-or-reason) of each action, for order-sensitive checks."""
    return [(a[0], a[1], a[2]) for a in actions]


def closed(actions) -> dict:
    return {a[1]: a[2] for a in actions if a[0] == "close"}


class Master:
    """A MasterState with a fake clock and helpers to play peers."""

    def __init__(self, peer_timeout: float = 10.0, handshake_timeout: float = 5.0, epoch: int = 0):
        self.state = _core_testing.MasterState(peer_timeout=peer_timeout, handshake_timeout=handshake_timeout,
                                               epoch=epoch)
        self.now = 100.0
        self.accepted: list[int] = []  # admitted by join(), in admission order

    def connect(self, conn: int):
        return self.state.on_connect(conn, f"10.0.0.{conn}:{50000 + conn}", self.now)

    def msg(self, conn: int, type_name: str, **fields):
        if type_name == "op_start":  # the descriptor's fields may be given flat, beside tag and timeout_ms
            desc = {k: fields.pop(k) for k in list(fields) if k in _DESC_FIELDS}
            fields["desc"] = {**desc, **fields.get("desc", {})}
            fields["desc"].setdefault("shape", [fields["desc"].get("count", 0)])  # a flat array of `count`
        return self.state.on_message(conn, type_name, fields, self.now)

    def hello(self, conn: int, group: int = 0, connections: int = 1):
        assert self.connect(conn) == []
        return self.msg(conn, "hello", group=group, connections=connections, host=f"10.0.0.{conn}", port=9000 + conn)

    def disconnect(self, conn: int, reason: str = "connection reset"):
        return self.state.on_disconnect(conn, reason, self.now)

    def tick(self, now: float | None = None):
        if now is not None:
            self.now = now
        return self.state.on_tick(self.now)

    def stats(self) -> dict:
        return self.state.stats()

    def join(self, conns, group: int = 0, connections: int = 1):
        """Admits peers one by one: each newcomer is admitted by a topology vote of everyone already in."""
        for c in conns:
            accepted = list(self.accepted)
            acts = self.hello(c, group, connections)
            for a in accepted:
                acts += self.msg(a, "topo_request", seq=1)
            assert c in sends(acts, "topo_result"), acts
            self.accepted.append(c)
        return self

    def start_all(self, conns, tag: int = 1, **desc):
        acts = []
        for c in conns:
            acts += self.msg(c, "op_start", tag=tag, **{**DESC, **desc})
        return acts


def running_op(m: Master, conns, tag: int = 1) -> int:
    go = sends(m.start_all(conns, tag), "op_go")
    assert set(go) == set(conns)
    return go[conns[0]]["op_id"]
