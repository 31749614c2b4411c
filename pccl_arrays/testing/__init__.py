"""Running real peer processes: the churn harness, its schedules, the peer side, and the pieces every
multi-process run of this project shares (docs/testing.md).

- :class:`Harness` (harness.py): a master in this process (or a :class:`MasterProcess`, master_process.py,
  that the schedule kills and restarts), peers as child processes that are killed, stalled and spawned on a
  :class:`Schedule` (schedule.py); :func:`check_no_hang` checks a finished run.
- :class:`PeerContext`, :func:`allreduce_loop` (peer.py): what a peer target gets, and the README training
  loop as the built-in target; :func:`state_loop` (state_loop.py) and :func:`check_state_run` (state_checks.py):
  the shared-state loop of the churn test and the soak benchmark, and its checks.
- records.py: the progress-line and result-file format; processes.py: children that die with their parent,
  and :class:`ProcessGroup` for workers that each hand in one result (the benchmarks'); process_status.py: a
  process's memory and thread count (:func:`process_status`, from /proc/PID/status).
"""

from .harness import Harness, check_no_hang
from .master_process import MasterProcess
from .peer import PeerContext, allreduce_loop
from .process_status import ProcessStatus, process_status, reset_peak_rss
from .processes import ProcessGroup, WorkerError, kill_and_reap, spawn_child
from .records import ProgressLog, die_with_parent, read_progress, read_result, report, run_target, write_result
from .schedule import ACTIONS, Event, Schedule
from .state_checks import check_state_run
from .state_loop import state_loop

__all__ = ["ACTIONS", "Event", "Harness", "MasterProcess", "PeerContext", "ProcessGroup", "ProcessStatus",
           "ProgressLog", "Schedule", "WorkerError", "allreduce_loop", "check_no_hang", "check_state_run",
           "die_with_parent", "kill_and_reap", "process_status", "read_progress", "read_result", "report",
           "reset_peak_rss", "run_target", "spawn_child", "state_loop", "write_result"]
