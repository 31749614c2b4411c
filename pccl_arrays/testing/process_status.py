"""A process's memory and thread count as the Linux kernel reports them in /proc/PID/status: the one reader the
tests, the benchmarks and the soak share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union


@dataclass(frozen=True)
class ProcessStatus:
    rss: int  # bytes resident now (VmRSS)
    peak_rss: int  # the most bytes resident at once (VmHWM), since the start or the last reset_peak_rss()
    threads: int  # the process's OS threads (Threads)


def process_status(pid: Union[int, str] = "self") -> Optional[ProcessStatus]:
    """This process's status, or process ``pid``'s; None once that process has ended (its /proc entry is gone, or
    it is a zombie, which has no memory left to report)."""
    fields = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                name, _, value = line.partition(":")
                fields[name] = value.split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    if "VmRSS" not in fields:  # a zombie: the memory lines go when the process exits
        return None
    return ProcessStatus(rss=_bytes(fields["VmRSS"]), peak_rss=_bytes(fields["VmHWM"]),
                         threads=int(fields["Threads"][0]))


def _bytes(value: list[str]) -> int:
    """A size line's value, ["1234", "kB"], in bytes (the kernel's kB are KiB)."""
    return int(value[0]) * 1024


def reset_peak_rss(pid: Union[int, str] = "self") -> None:
    """Makes the peak (VmHWM) start again from the current resident size, so that it shows what comes next."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")
