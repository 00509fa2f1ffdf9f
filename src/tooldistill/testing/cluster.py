"""A Ray cluster of several nodes on this machine, for tests: separate raylets on 127.0.0.1.

Built on Ray's own test cluster (``ray.cluster_utils.Cluster``): the head (GCS, the first raylet,
the driver's node) and any number of worker nodes, each a raylet of its own with its own object
store and worker processes.  What this module adds:

- **Placement.**  Every node declares one unit of a custom resource named after it (``node_a``,
  ``node_b``, ...), so work can be sent to a chosen node (``on(name)``), and as few CPUs as a test
  asks for (Ray lets a node declare more CPUs than the machine has), so an actor pool of one
  actor per CPU puts one actor on each node.
- **Loopback only.**  Every node is started with ``node_ip_address=127.0.0.1``, so the GCS, the
  raylets, the object managers, the agents and the workers listen on 127.0.0.1 alone.  Ray turns
  a ``127.0.0.1`` address given to ``ray.init`` into the machine's outward address (it assumes a
  cluster spans machines), where nothing listens; ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (Ray's
  own switch for single-machine clusters) keeps it on 127.0.0.1, in this process (read by Ray at
  import, so set on ``ray_constants`` too) and in every process the nodes start.  Both are put
  back by ``shutdown``.
- **Its own Ray folder.**  ``RAY_TMPDIR`` points at the cluster's root folder while it runs: the
  sessions, logs and the "current cluster" file that a bare ``ray.init()`` on this machine would
  read stay out of ``/tmp/ray``, so no other process on the machine joins this cluster by mistake.
- **Nodes that see different local folders.**  Each node has a folder of its own
  (``ClusterNode.directory``): the working directory of its raylet and so of its workers (Ray
  has no option for it: this process's own is changed while a node starts), its ``TMPDIR`` and
  its Ray temp folder; ``TOOLDISTILL_TEST_NODE`` names the node in its workers.  A
  stage that hands its workers a path relative to the driver's working directory (or one in the
  driver's ``TMPDIR``) reads another folder there, as it would on a real cluster.  Absolute paths
  still reach the one disk all the nodes share here: data that every node must see belongs on
  S3 (the tests use a moto server).
- **Node loss.**  ``remove_node`` kills a node the way a lost machine goes: its raylet, agents and
  workers are SIGKILLed, nothing drains.  The GCS finds out through its health checks, as on a
  real cluster: with Ray's defaults about 15 s later, and work that calls the lost node meanwhile
  sees it "temporarily unavailable" (``QUICK_HEALTH_CHECKS``: about 2 s, for tests that only need
  the node gone).  ``replace_node`` then starts a new node with the same name and resources, as
  an autoscaler replacing a preempted node would.  ``disrupt`` runs a piece of work in a thread
  and loses a node in the middle of it.

The head cannot be removed: the driver (this process) is connected to it, as on a real cluster.
``ray.cluster_utils.Cluster`` installs a SIGTERM handler per node, so nodes are added and removed
from the main thread only (``disrupt`` runs the work, not the cluster, in a thread).

    with LoopbackCluster(head_cpus=1) as cluster:
        cluster.add_node("node_b", num_cpus=1)
        cluster.connect()
        ...  # RayRunner(address=cluster.address)
        done = cluster.disrupt(lambda: stage(...), node="node_b", when=lambda node: ...)
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

T = TypeVar("T")

LOOPBACK = "127.0.0.1"
#: Names the node in the environment of its raylet and workers.
NODE_ENV = "TOOLDISTILL_TEST_NODE"
#: Ray's switch between "a cluster spans machines" (the default on Linux) and "this machine only".
_CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
#: ``system_config`` for a node death noticed within about two seconds: a health check every
#: 0.5 s, dead after 4 failures.  The timeout stays long so that a busy but live node (two cores for
#: everything) is not declared dead.  Ray's defaults take about 15 s.
QUICK_HEALTH_CHECKS = {
    "health_check_initial_delay_ms": 1000,
    "health_check_period_ms": 500,
    "health_check_timeout_ms": 3000,
    "health_check_failure_threshold": 4,
}
#: Object store per node: small, the tests move little data (Ray's test cluster default).
OBJECT_STORE_BYTES = 150 * 1024 * 1024
#: Unix socket paths (under each node's Ray temp folder) must stay under about 107 characters.
_MAX_ROOT = 48


def on(name: str) -> dict[str, Any]:
    """Ray remote options that place a task or actor on the node called ``name``."""
    return {"resources": {name: 0.001}}


@dataclass
class ClusterNode:
    """One node: a raylet with its object store and worker processes."""

    name: str
    num_cpus: float
    directory: Path
    head: bool
    generation: int
    #: ``ray._private.node.Node``
    node: Any = field(repr=False)

    @property
    def node_id(self) -> str:
        return str(self.node.node_id)

    @property
    def raylet_pid(self) -> int:
        from ray._private import ray_constants

        return int(self.node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid)

    def processes(self) -> list[Any]:
        """The raylet's descendants (``psutil.Process``): its agents and workers."""
        import psutil

        try:
            return list(psutil.Process(self.raylet_pid).children(recursive=True))
        except psutil.Error:
            return []

    def running(self, title: str) -> list[int]:
        """Pids of this node's processes whose title starts with ``title``: Ray sets
        ``ray::<function>`` or ``ray::<actor class>.<method>`` while a worker runs one, and
        ``ray::IDLE`` or the bare actor class while it waits."""
        import psutil

        pids = []
        for process in self.processes():
            try:
                command = process.cmdline()
            except psutil.Error:
                continue
            if command and command[0].startswith(title):
                pids.append(process.pid)
        return pids


@dataclass
class Disruption(Generic[T]):
    """What ``disrupt`` did: the work's result, and the node it lost (None when the work ended
    before ``when`` held)."""

    result: T
    lost: ClusterNode | None = None
    #: The new node that took the lost one's place (None without ``replace``).
    replacement: ClusterNode | None = None
    #: Titles of the lost node's processes that were running ``when`` held.
    titles: list[str] = field(default_factory=list)
    #: Seconds from the start of the work to the loss, and from the loss to the work's end.
    before_s: float = 0.0
    after_s: float = 0.0


_chdir_lock = threading.Lock()


@contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    """This process's working directory is ``path`` meanwhile (the processes a node starts
    inherit it; Ray has no option for it)."""
    with _chdir_lock:
        previous = os.getcwd()
        os.chdir(path)
        try:
            yield
        finally:
            os.chdir(previous)


class LoopbackCluster:
    """A Ray cluster of separate raylets on 127.0.0.1: the head, then nodes added by name.

    ``start`` (or ``with``) disconnects this process from any Ray it is connected to and starts
    the head; ``shutdown`` disconnects, stops every node and puts the environment back.  ``root``:
    the folder for the nodes' folders and Ray's files (short: Unix socket paths live under it);
    None: a new folder under ``/tmp``, deleted by ``shutdown`` unless ``keep``.  ``system_config``:
    Ray's ``_system_config`` for the head (e.g. ``QUICK_HEALTH_CHECKS``); None: Ray's defaults.
    ``resources``: custom resources every node declares besides its own name (e.g. one
    ``trainer`` slot a node, so that workers asking for one land on different nodes).
    """

    def __init__(
        self,
        head_cpus: float = 1.0,
        head_name: str = "node_a",
        *,
        root: str | Path | None = None,
        keep: bool = False,
        object_store_memory: int = OBJECT_STORE_BYTES,
        system_config: dict[str, Any] | None = None,
        resources: dict[str, float] | None = None,
    ) -> None:
        if root is not None and len(str(root)) > _MAX_ROOT:
            raise ValueError(
                f"cluster root {root} is too long ({len(str(root))} > {_MAX_ROOT} characters): "
                "Ray's Unix sockets live under it"
            )
        self.head_cpus = head_cpus
        self.head_name = head_name
        self.object_store_memory = object_store_memory
        self.system_config = dict(system_config or {})
        self.resources = dict(resources or {})
        self._root = Path(root) if root is not None else None
        self._owns_root = root is None and not keep
        self._cluster: Any = None
        self._nodes: dict[str, ClusterNode] = {}
        self._generations: dict[str, int] = {}
        self._saved_env: dict[str, str | None] = {}
        self._saved_switch: bool | None = None
        self._saved_sigterm: Any = None

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def root(self) -> Path:
        if self._root is None:
            raise RuntimeError("the cluster is not started")
        return self._root

    @property
    def address(self) -> str:
        """The GCS address (``127.0.0.1:port``), for ``ray.init`` or ``RayRunner(address=)``."""
        if self._cluster is None:
            raise RuntimeError("the cluster is not started")
        return str(self._cluster.address)

    @property
    def nodes(self) -> dict[str, ClusterNode]:
        """The live nodes by name, the head first."""
        return dict(self._nodes)

    def start(self) -> LoopbackCluster:
        import ray
        from ray._private import ray_constants
        from ray.cluster_utils import Cluster

        if self._cluster is not None:
            raise RuntimeError("the cluster is already started")
        if ray.is_initialized():
            ray.shutdown()
        if self._root is None:
            self._root = Path(tempfile.mkdtemp(prefix="td-cluster-", dir="/tmp"))
        self._root.mkdir(parents=True, exist_ok=True)
        self._saved_env = {name: os.environ.get(name) for name in (_CLUSTER_SWITCH, "RAY_TMPDIR")}
        os.environ[_CLUSTER_SWITCH] = "0"
        os.environ["RAY_TMPDIR"] = str(self._root)
        self._saved_switch = ray_constants.ENABLE_RAY_CLUSTER
        ray_constants.ENABLE_RAY_CLUSTER = False
        self._saved_sigterm = signal.getsignal(signal.SIGTERM)  # each node installs its own
        try:
            directory, args = self._node_args(self.head_name, self.head_cpus)
            args["include_dashboard"] = False
            if self.system_config:
                args["_system_config"] = dict(self.system_config)
            with _working_directory(directory):
                self._cluster = Cluster(initialize_head=True, head_node_args=args)
            self._nodes[self.head_name] = ClusterNode(
                self.head_name, self.head_cpus, directory, True, 0, self._cluster.head_node
            )
        except BaseException:
            self.shutdown()
            raise
        return self

    def connect(self) -> None:
        """Connect this process to the cluster as its driver, the way the pipeline does
        (``tooldistill.raycluster.ensure_ray``)."""
        from tooldistill.raycluster import ensure_ray

        ensure_ray(self.address)

    def shutdown(self) -> None:
        """Disconnect the driver, stop every node, put the environment back."""
        import ray
        from ray._private import ray_constants

        try:
            if ray.is_initialized():
                ray.shutdown()
            if self._cluster is not None:
                for name in [n for n in self._nodes if n != self.head_name]:
                    self._kill(self._nodes.pop(name))
                self._cluster.shutdown()
        finally:
            self._cluster = None
            self._nodes.clear()
            for name, value in self._saved_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            self._saved_env = {}
            if self._saved_switch is not None:
                ray_constants.ENABLE_RAY_CLUSTER = self._saved_switch
                self._saved_switch = None
            if self._saved_sigterm is not None:
                signal.signal(signal.SIGTERM, self._saved_sigterm)
                self._saved_sigterm = None
            if self._owns_root and self._root is not None:
                shutil.rmtree(self._root, ignore_errors=True)
                self._root = None

    def __enter__(self) -> LoopbackCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # -- nodes ---------------------------------------------------------------------------------

    def _node_args(self, name: str, num_cpus: float) -> tuple[Path, dict[str, Any]]:
        generation = self._generations.get(name, -1) + 1
        self._generations[name] = generation
        directory = self.root / f"{name}.{generation}"
        (directory / "tmp").mkdir(parents=True)
        args: dict[str, Any] = {
            "num_cpus": num_cpus,
            "resources": {**self.resources, name: 1},
            "node_ip_address": LOOPBACK,
            "object_store_memory": self.object_store_memory,
            "env_vars": {NODE_ENV: name, "TMPDIR": str(directory / "tmp")},
        }
        if self._cluster is not None:  # the head's Ray folder is RAY_TMPDIR's
            args["temp_dir"] = str(directory / "ray")
        return directory, args

    def add_node(self, name: str, num_cpus: float = 1.0) -> ClusterNode:
        """Start a node called ``name`` (also its custom resource) with ``num_cpus`` CPUs; returns
        once the GCS knows it."""
        if self._cluster is None:
            raise RuntimeError("start the cluster first")
        if name in self._nodes:
            raise ValueError(f"a node called {name} is already up")
        directory, args = self._node_args(name, num_cpus)
        with _working_directory(directory):
            node = self._cluster.add_node(wait=True, **args)
        added = ClusterNode(name, num_cpus, directory, False, self._generations[name], node)
        self._nodes[name] = added
        return added

    def remove_node(self, name: str) -> ClusterNode:
        """Kill node ``name`` as a lost machine goes: every process of it SIGKILLed, at once."""
        if name == self.head_name:
            raise ValueError("the head cannot be removed: the driver is connected to it")
        node = self._nodes.pop(name)
        self._kill(node)
        return node

    def replace_node(self, name: str) -> ClusterNode:
        """A new node in the place of ``name`` (removed first if it is still up): same name,
        resources and CPUs, a fresh folder."""
        old = self._nodes.get(name)
        if old is not None:
            self.remove_node(name)
        num_cpus = old.num_cpus if old is not None else 1.0
        return self.add_node(name, num_cpus)

    def _kill(self, node: ClusterNode) -> None:
        import psutil

        descendants = node.processes()
        # The raylet and its agents first (SIGKILL, no drain), then its workers: they would exit
        # on their own once their raylet is gone, a lost machine takes them at once.
        self._cluster.remove_node(node.node, allow_graceful=False)
        for process in descendants:
            with suppress(psutil.Error):
                process.send_signal(signal.SIGKILL)
        psutil.wait_procs(descendants, timeout=10)

    def wait_for_nodes(self, timeout: float = 60.0) -> None:
        """Until the GCS counts exactly the live nodes (a removed node counted dead)."""
        self._cluster.wait_for_nodes(timeout)

    def wait_until_dead(self, node: ClusterNode, timeout: float = 60.0) -> None:
        """Until the GCS has declared ``node`` dead."""
        import ray

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = {n["NodeID"]: n["Alive"] for n in ray.nodes()}
            if not states.get(node.node_id, False):
                return
            time.sleep(0.1)
        raise TimeoutError(f"the GCS still counts {node.name} ({node.node_id}) alive after {timeout} s")

    # -- losing a node in the middle of some work ----------------------------------------------

    def disrupt(
        self,
        work: Callable[[], T],
        *,
        node: str,
        when: Callable[[ClusterNode], bool],
        replace: bool = True,
        poll_s: float = 0.01,
        timeout_s: float = 600.0,
    ) -> Disruption[T]:
        """Run ``work()`` in a thread; from this thread, once ``when(node)`` holds (checked every
        ``poll_s`` while the work runs), remove the node and, with ``replace``, start one in its
        place.  Returns the work's result and what was lost; the work's exception is raised, and a
        ``TimeoutError`` after ``timeout_s``."""
        target = self._nodes[node]
        lost: ClusterNode | None = None
        replacement: ClusterNode | None = None
        titles: list[str] = []
        started = time.perf_counter()
        lost_at = started
        ended: list[float] = []

        def timed() -> T:
            try:
                return work()
            finally:
                ended.append(time.perf_counter())

        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="disrupted-work")
        future = pool.submit(timed)
        try:
            while not future.done():
                if time.perf_counter() - started > timeout_s:
                    raise TimeoutError(f"the work did not end within {timeout_s} s")
                if lost is None and when(target):
                    titles = self._titles(target)
                    lost_at = time.perf_counter()
                    lost = self.remove_node(node)
                    if replace:
                        replacement = self.add_node(node, target.num_cpus)
                time.sleep(poll_s)
            result = future.result()
        finally:
            # On an error here the work may wait forever (for the node it lost): leave its thread
            # to the cluster's shutdown, which makes its Ray calls fail.
            pool.shutdown(wait=future.done())
        outcome = Disruption(result, lost, replacement, titles)
        if lost is not None:
            outcome.before_s = round(lost_at - started, 3)
            outcome.after_s = round(ended[0] - lost_at, 3)
        return outcome

    @staticmethod
    def _titles(node: ClusterNode) -> list[str]:
        import psutil

        titles = []
        for process in node.processes():
            try:
                command = process.cmdline()
            except psutil.Error:
                continue
            if command and command[0].startswith("ray::"):
                titles.append(command[0])
        return sorted(titles)


@contextmanager
def loopback_cluster(
    head_cpus: float = 1.0, nodes: dict[str, float] | None = None, **options: Any
) -> Iterator[LoopbackCluster]:
    """A started ``LoopbackCluster`` with ``nodes`` (name: CPUs) added and all of them registered;
    shut down afterwards.  For a pytest fixture: ``with loopback_cluster(1, {"node_b": 1}) as c:
    yield c``."""
    cluster = LoopbackCluster(head_cpus, **options).start()
    try:
        for name, cpus in (nodes or {}).items():
            cluster.add_node(name, cpus)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()
