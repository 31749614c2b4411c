"""A real NAT test network built from Linux network namespaces (root, `ip` and `iptables` needed; see
:func:`available`). Standard library only, so it imports without the C++ core.

How this works::

                    "internet" namespace: bridge br0, 10.77.0.1/24 (it does not forward)
     +------------------------------------------------------------------------+
     |                                  br0                                   |
     +------+---------------------------+---------------------------+---------+
            | veth                      | veth                      | veth
     public("m") namespace       router of home("h1")         router of home("h2") ...
       eth0 10.77.0.10             pub0 10.77.0.11              pub0 10.77.0.12
       default via 10.77.0.1       ip_forward=1, MASQUERADE -o pub0
       10.78.1.0/24 via .11        FORWARD: ESTABLISHED,RELATED -> ACCEPT
       10.78.2.0/24 via .12                 -i pub0 NEW         -> DROP  (counted: attempts_inward)
                                            -i pub0 anything else -> DROP
                                   lan0 10.78.1.1               lan0 10.78.2.1
                                        | veth                       | veth
                                   home("h1") namespace         home("h2") namespace
                                     eth0 10.78.1.2               eth0 10.78.2.2
                                     default via 10.78.1.1        default via 10.78.2.1

Every namespace is its own network stack, so nothing reaches the host, and the fixed subnets cannot collide
with another run's; only namespace names are shared, and they carry this process's pid and a random tag
(`pn<pid>x<tag>-<name>`). Veths are created from one namespace straight into another, so the host's root
namespace only sees namespaces being added and deleted.

What is counted: public namespaces and routers route each home's private subnet to that home's router, so a
connection attempt towards a private address leaves as a packet and is dropped by the router's FORWARD rule
for NEW connections coming in on its public side. :meth:`NatNetwork.attempts_inward` reads that rule's packet
counter (packets, not connections: every SYN counts, retransmissions too), :meth:`NatNetwork.reset_counters`
zeroes it. Outgoing connections from a home and their replies never hit it. Routers route the other homes'
subnets the same way, so a home connecting to another home's private address is counted too.

    with NatNetwork() as net:                    # up() on enter, down() on exit (also after an error)
        m, h = net.public("m"), net.home("h1")
        server = m.popen([sys.executable, "-c", ...], stdout=subprocess.PIPE)
        assert net.attempts_inward(h) == 0
"""
from __future__ import annotations

import atexit
import os
import re
import secrets
import shutil
import signal
import subprocess
from dataclasses import dataclass, field

INTERNET = "10.77.0"           # the bridge's /24; .1 is the bridge, hosts and routers from .10
PRIVATE = "10.78.{}"           # home K's /24: .1 its router's lan0, .2 the home namespace
_NAME = re.compile(r"^[a-z0-9]{1,8}$")
_OURS = re.compile(r"^pn(\d+)x[0-9a-f]{4}-")


class NetnsError(RuntimeError):
    """A command building or reading the network failed; the message has the command and its stderr."""


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NetnsError(f"`{' '.join(cmd)}` failed: {e}") from None
    if check and r.returncode != 0:
        raise NetnsError(f"`{' '.join(cmd)}` failed (exit {r.returncode}): {r.stderr.strip()}")
    return r


def _namespaces() -> set[str]:
    return {line.split()[0] for line in _run("ip", "netns", "list").stdout.splitlines() if line.strip()}


def _delete_namespace(ns: str) -> None:
    """Kill whatever still runs inside ns, then delete it (its veths go with it)."""
    for pid in _run("ip", "netns", "pids", ns, check=False).stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    _run("ip", "netns", "del", ns, check=False)


_available: tuple[bool, str] | None = None


def available() -> tuple[bool, str]:
    """(True, "") when namespaces, veths and iptables (nat and conntrack) work here, else (False, why)."""
    global _available
    if _available is None:
        _available = _probe()
    return _available


def _probe() -> tuple[bool, str]:
    if os.geteuid() != 0:
        return False, "network namespaces need root"
    for tool, package in (("ip", "iproute2"), ("iptables", "iptables"), ("sysctl", "procps")):
        if shutil.which(tool) is None:
            return False, f"`{tool}` is not on PATH (apt-get install -y {package})"
    ns = f"pn{os.getpid()}x{secrets.token_hex(2)}-probe"
    try:
        _run("ip", "netns", "add", ns)
        _run("ip", "-n", ns, "link", "add", "name", "a", "type", "veth", "peer", "name", "b")
        ipt = ("ip", "netns", "exec", ns, "iptables", "-w")
        _run(*ipt, "-t", "nat", "-A", "POSTROUTING", "-o", "a", "-j", "MASQUERADE")
        _run(*ipt, "-A", "FORWARD", "-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", "x",
             "-j", "DROP")
        _run("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        return True, ""
    except NetnsError as e:
        return False, f"namespaces or iptables do not work here: {e}"
    finally:
        _run("ip", "netns", "del", ns, check=False)


def remove_stale() -> list[str]:
    """Delete namespaces left by NatNetworks of processes that are gone (a killed test run); returns them."""
    stale = [ns for ns in _namespaces() if (m := _OURS.match(ns)) and not os.path.exists(f"/proc/{m.group(1)}")]
    for ns in stale:
        _delete_namespace(ns)
    return stale


@dataclass
class Host:
    """A namespace on the network: `ns` its name, `ip` its address (a home's is private)."""
    name: str
    ns: str
    ip: str
    net: NatNetwork = field(repr=False)

    def prefix(self) -> list[str]:
        """What to put in front of a command to run it in this namespace."""
        return ["ip", "netns", "exec", self.ns]

    def popen(self, cmd: list[str], **kw) -> subprocess.Popen:
        """subprocess.Popen(cmd) inside the namespace; killed by down() if still running."""
        p = subprocess.Popen(self.prefix() + list(cmd), **kw)
        self.net._procs.append(p)
        return p

    def run(self, cmd: list[str], **kw) -> subprocess.CompletedProcess:
        """subprocess.run(cmd) inside the namespace."""
        return subprocess.run(self.prefix() + list(cmd), **kw)


@dataclass
class Home(Host):
    """A home machine behind its own NAT router: `ip` is private, `public_ip` the router's (what others see)."""
    router_ns: str = ""
    public_ip: str = ""
    subnet: str = ""


class NatNetwork:
    """The network drawn at the top of this module. up() builds the internet, public()/home() add machines,
    down() removes every namespace (idempotent; also run by __exit__ and, as a last resort, at exit)."""

    def __init__(self) -> None:
        self.tag = f"pn{os.getpid()}x{secrets.token_hex(2)}"
        self.internet_ns = f"{self.tag}-inet"
        self.hosts: dict[str, Host] = {}
        self._namespaces: list[str] = []
        self._procs: list[subprocess.Popen] = []
        self._routes: list[str] = []      # namespaces that route the private subnets: publics and routers
        self._uncounted: list[str] = []   # sources whose inward attempts are dropped without being counted
        self._next_ip = 10
        self._ports = 0
        self._up = False

    def __enter__(self) -> NatNetwork:
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()

    def _ns(self, ns: str) -> None:
        _run("ip", "netns", "add", ns)
        self._namespaces.append(ns)
        _run("ip", "-n", ns, "link", "set", "lo", "up")

    def _plug(self, ns: str, ifname: str) -> str:
        """A veth from the bridge into ns (named ifname there), up and addressed; returns the address."""
        if self._next_ip > 254:
            raise NetnsError("the internet subnet is full")
        ip, port = f"{INTERNET}.{self._next_ip}", f"port{self._ports}"
        self._next_ip += 1
        self._ports += 1
        _run("ip", "-n", self.internet_ns, "link", "add", "name", port, "type", "veth",
             "peer", "name", ifname, "netns", ns)
        _run("ip", "-n", self.internet_ns, "link", "set", port, "master", "br0", "up")
        _run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", ifname)
        _run("ip", "-n", ns, "link", "set", ifname, "up")
        _run("ip", "-n", ns, "route", "add", "default", "via", f"{INTERNET}.1")
        for home in self.homes():
            _run("ip", "-n", ns, "route", "add", home.subnet, "via", home.public_ip)
        self._routes.append(ns)
        return ip

    def up(self) -> NatNetwork:
        """Create the internet namespace and its bridge (removing stale namespaces of dead runs first)."""
        if self._up:
            return self
        ok, why = available()
        if not ok:
            raise NetnsError(why)
        remove_stale()
        self._up = True
        atexit.register(self.down)
        try:
            self._ns(self.internet_ns)
            _run("ip", "-n", self.internet_ns, "link", "add", "name", "br0", "type", "bridge")
            _run("ip", "-n", self.internet_ns, "addr", "add", f"{INTERNET}.1/24", "dev", "br0")
            _run("ip", "-n", self.internet_ns, "link", "set", "br0", "up")
        except BaseException:
            self.down()
            raise
        return self

    def _new(self, name: str) -> str:
        if not self._up:
            raise NetnsError("call up() (or enter the NatNetwork) first")
        if not _NAME.match(name) or name in self.hosts or name == "inet":
            raise ValueError(f"host name {name!r}: want 1-8 of [a-z0-9], unique, not 'inet'")
        return f"{self.tag}-{name}"

    def public(self, name: str) -> Host:
        """A machine with a public address on the internet subnet (master, reachable peers)."""
        ns = self._new(name)
        self._ns(ns)
        host = self.hosts[name] = Host(name, ns, self._plug(ns, "eth0"), self)
        return host

    def home(self, name: str) -> Home:
        """A machine behind its own NAT router: it can connect out, nobody outside can connect in."""
        ns = self._new(name)
        k = len(self.homes()) + 1
        if k > 254:
            raise NetnsError("too many homes")
        router, lan = f"{ns}-r", PRIVATE.format(k)
        self._ns(router)
        self._ns(ns)
        public_ip = self._plug(router, "pub0")
        _run("ip", "-n", router, "link", "add", "name", "lan0", "type", "veth", "peer", "name", "eth0", "netns", ns)
        _run("ip", "-n", router, "addr", "add", f"{lan}.1/24", "dev", "lan0")
        _run("ip", "-n", router, "link", "set", "lan0", "up")
        _run("ip", "-n", ns, "addr", "add", f"{lan}.2/24", "dev", "eth0")
        _run("ip", "-n", ns, "link", "set", "eth0", "up")
        _run("ip", "-n", ns, "route", "add", "default", "via", f"{lan}.1")
        _run("ip", "netns", "exec", router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        ipt = ("ip", "netns", "exec", router, "iptables", "-w")
        _run(*ipt, "-t", "nat", "-A", "POSTROUTING", "-o", "pub0", "-j", "MASQUERADE")
        _run(*ipt, "-A", "FORWARD", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
        for ip in self._uncounted:
            self._drop_uncounted(router, ip)
        _run(*ipt, "-A", "FORWARD", "-i", "pub0", "-m", "conntrack", "--ctstate", "NEW",
             "-m", "comment", "--comment", "inward", "-j", "DROP")
        _run(*ipt, "-A", "FORWARD", "-i", "pub0", "-j", "DROP")     # anything else unsolicited (INVALID)
        home = Home(name, ns, f"{lan}.2", self, router_ns=router, public_ip=public_ip, subnet=f"{lan}.0/24")
        for other in self._routes:
            if other != router:
                _run("ip", "-n", other, "route", "add", home.subnet, "via", public_ip)
        self.hosts[name] = home
        return home

    def homes(self) -> list[Home]:
        return [h for h in self.hosts.values() if isinstance(h, Home)]

    def _home(self, home: Home | str) -> Home:
        h = self.hosts.get(home) if isinstance(home, str) else home
        if not isinstance(h, Home):
            raise ValueError(f"{home!r} is not a home of this network")
        return h

    @staticmethod
    def _drop_uncounted(router: str, ip: str) -> None:
        _run("ip", "netns", "exec", router, "iptables", "-w", "-I", "FORWARD", "2", "-i", "pub0", "-s", ip,
             "-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", "uncounted", "-j", "DROP")

    def uncounted(self, ip: str) -> None:
        """Attempts from ``ip`` are still dropped by every router (of existing and later homes), but no longer
        counted by attempts_inward: e.g. the master, whose probe of a newcomer's address comes before admission."""
        self._uncounted.append(ip)
        for home in self.homes():
            self._drop_uncounted(home.router_ns, ip)

    def attempts_inward(self, home: Home | str) -> int:
        """Packets of NEW connections from outside that the home's router dropped since the last reset."""
        router = self._home(home).router_ns
        out = _run("ip", "netns", "exec", router, "iptables", "-w", "-L", "FORWARD", "-n", "-v", "-x").stdout
        for line in out.splitlines():
            if "/* inward */" in line:
                return int(line.split()[0])
        raise NetnsError(f"no inward DROP rule in {router}'s FORWARD chain:\n{out}")

    def reset_counters(self) -> None:
        """Zero every router's counters (attempts_inward reads 0 afterwards)."""
        for home in self.homes():
            _run("ip", "netns", "exec", home.router_ns, "iptables", "-w", "-Z", "FORWARD")

    def down(self) -> None:
        """Kill the processes started with popen() and any other left inside, and delete every namespace."""
        if not self._up:
            return
        for p in self._procs:
            if p.poll() is None:
                p.kill()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self._procs.clear()
        for ns in reversed(self._namespaces):
            _delete_namespace(ns)
        left = _namespaces() & set(self._namespaces)
        self._namespaces.clear()
        self.hosts.clear()
        self._routes.clear()
        self._up = False
        atexit.unregister(self.down)
        if left:
            raise NetnsError(f"namespaces not deleted: {sorted(left)}")
