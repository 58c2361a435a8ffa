"""A pymesos scheduler that launches N command tasks against a master and
exits 0 once all of them have finished. Used by tests/tests/pymesos.rs.

Usage: scheduler.py HOST:PORT N
"""

import logging
import time
import socket
import sys
import threading

from addict import Dict
from pymesos import MesosSchedulerDriver, Scheduler

CPUS = 0.1
MEM = 32


def scalar(resources, name):
    return sum(r.scalar.value for r in resources if r.name == name and r.type == "SCALAR")


class Launcher(Scheduler):
    def __init__(self, n):
        self.n = n
        self.next = 0
        self.states = {}
        self.updates = 0
        self.done = threading.Event()
        self.failed = None

    def resourceOffers(self, driver, offers):
        for offer in offers:
            cpus = scalar(offer.resources, "cpus")
            mem = scalar(offer.resources, "mem")
            tasks = []
            while self.next < self.n and cpus >= CPUS and mem >= MEM:
                task = Dict()
                task.task_id.value = "py-%d" % self.next
                task.agent_id.value = offer.agent_id.value
                task.name = "pymesos task %d" % self.next
                task.command.value = "echo hello from $MESOS_TASK_ID"
                task.resources = [
                    dict(name="cpus", type="SCALAR", scalar={"value": CPUS}),
                    dict(name="mem", type="SCALAR", scalar={"value": MEM}),
                ]
                tasks.append(task)
                self.next += 1
                cpus -= CPUS
                mem -= MEM
            if tasks:
                driver.launchTasks(offer.id, tasks, {"refuse_seconds": 1})
            else:
                driver.declineOffer(offer.id, {"refuse_seconds": 1})

    def statusUpdate(self, driver, update):
        self.updates += 1
        self.states[update.task_id.value] = update.state
        if update.state in ("TASK_FAILED", "TASK_LOST", "TASK_ERROR", "TASK_DROPPED", "TASK_KILLED"):
            self.failed = "%s %s: %s" % (update.task_id.value, update.state, update.get("message"))
            self.done.set()
        finished = sum(1 for s in self.states.values() if s == "TASK_FINISHED")
        if finished == self.n:
            self.done.set()


def main():
    logging.basicConfig(level=logging.WARNING)
    master, n = sys.argv[1], int(sys.argv[2])
    framework = Dict()
    framework.user = "root"
    framework.name = "pymesos acceptance"
    framework.hostname = socket.gethostname()
    sched = Launcher(n)
    driver = MesosSchedulerDriver(sched, framework, master, use_addict=True)
    driver.start()
    ok = sched.done.wait(120)
    # Let the last implicit acknowledgements go out before tearing down.
    time.sleep(1)
    driver.stop()
    driver.join()
    finished = sum(1 for s in sched.states.values() if s == "TASK_FINISHED")
    print("finished=%d updates=%d" % (finished, sched.updates))
    if not ok:
        print("timed out", file=sys.stderr)
        return 1
    if sched.failed:
        print("failed: " + sched.failed, file=sys.stderr)
        return 1
    return 0 if finished == n else 1


if __name__ == "__main__":
    sys.exit(main())
