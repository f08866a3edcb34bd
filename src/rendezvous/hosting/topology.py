"""The topology: which roles run in which processes, on which engine, how many replicas.

One ``Topology`` describes every way of serving, and ``Topology.mode`` says which one it is:

- ``SINGLE``: every role in this process (model hosts are its child processes); with
  ``partition`` set, this process is one of the partitions below;
- ``ROLE``: one role of a deployment on a shared engine, anywhere (``serve --role``).

and, run by the one supervisor (``Supervisor.run`` with a plan from ``hosting.plans``):

- ``PARTITIONS``: ``processes`` SINGLE processes, each on its own partition of the engine's log;
- ``LAUNCHER``: an engine whose server this machine starts, every role its own process;
- ``REPLICAS``: ``replicas`` ROLE processes of one worker command.

A deployment has five roles (DESIGN.md §1): the proxy (HTTP edge), the workers (one consumer
group per model version), the rendezvous server, the decoy and the monitor. One process can
run them all on the embedded engine; on NATS each can run as its own process, on any machine:

    rendezvous serve demo --streams nats://10.0.0.5:4222 --role worker --model fraud@3

How many of each may run at once, on one deployment:

- proxy: any number (each has its own return address);
- worker: any number per model version (they share the version's group, so the work);
- decoy: any number (they share the ``decoy`` group; each writes its own Parquet files);
- rendezvous, monitor: exactly one. The rendezvous server must see a request and all of its
  scores, and the monitor's statistics must see every result; a second member of their group
  would receive only part of the stream.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from rendezvous.core import messages
from rendezvous.core.policy import Policy
from rendezvous.errors import ConfigError
from rendezvous.ids import ModelRef

__all__ = ["Mode", "ProcessRole", "Roles", "Topology", "groups_of"]


class ProcessRole(enum.StrEnum):
    """One role of a deployment, as ``serve --role`` names it."""

    PROXY = "proxy"
    WORKER = "worker"
    RENDEZVOUS = "rendezvous"
    DECOY = "decoy"
    MONITOR = "monitor"


@dataclass(frozen=True, slots=True)
class Roles:
    """The roles this process runs, and for workers which model versions.

    ``models`` empty means every model of the deployment's policy, following policy changes
    (workers start for added models and stop for retired ones); given, exactly those.

    >>> Roles().everything
    True
    >>> Roles.only("worker", ["fraud@3"]).label
    'worker (fraud@3)'
    """

    run: frozenset[ProcessRole] = frozenset(ProcessRole)
    models: tuple[str, ...] = ()

    @classmethod
    def only(cls, role: ProcessRole | str, models: Iterable[str] = ()) -> Roles:
        """One role; ``models`` (``NAME@VERSION``) only for the worker role."""
        try:
            parsed = ProcessRole(role)
        except ValueError:
            known = ", ".join(r.value for r in ProcessRole)
            raise ConfigError(f"unknown role {role!r}; use one of: {known}") from None
        models = tuple(models)
        if models and parsed is not ProcessRole.WORKER:
            raise ConfigError(
                f"--model applies to workers only, not to --role {parsed.value}; drop --model "
                "or use --role worker"
            )
        for m in models:
            ref = ModelRef.parse(m)
            if not ref.resolved:
                raise ConfigError(
                    f"--model {m!r} names an alias; give the version a worker scores as "
                    f"NAME@VERSION (see `rendezvous models show {m}`)"
                )
        return cls(frozenset({parsed}), models)

    @property
    def everything(self) -> bool:
        return self.run == frozenset(ProcessRole)

    def __contains__(self, role: object) -> bool:
        return role in self.run

    @property
    def label(self) -> str:
        """How logs and banners name this process's share, e.g. ``worker (fraud@3)``."""
        if self.everything:
            return "all roles"
        names = ", ".join(sorted(r.value for r in self.run))
        return f"{names} ({', '.join(self.models)})" if self.models else names


def groups_of(deployment: str, policy: Policy, role: ProcessRole,
              models: Iterable[str] = ()) -> list[tuple[str, str]]:
    """The (topic, consumer group) pairs a role of ``deployment`` reads.

    Once all of them exist on the engine, nothing appended afterwards is missed by that role,
    whenever its process actually gets to it: the launcher waits for them before it opens the
    proxy to traffic.
    """
    # Imported here: the CLI imports this module, and these pull in numpy and pyarrow.
    from rendezvous.roles import decoy, reads, rendezvous, worker

    topic = messages.topic
    if role is ProcessRole.WORKER:
        return [(topic(deployment, "input"), worker.group_name(m))
                for m in (list(models) or policy.model_names())]
    if role is ProcessRole.RENDEZVOUS:
        return [(topic(deployment, "input"), rendezvous.GROUP),
                (topic(deployment, "scores"), rendezvous.GROUP)]
    if role is ProcessRole.DECOY:
        return [(topic(deployment, "input"), decoy.GROUP)] if policy.decoy else []
    if role is ProcessRole.MONITOR:
        return reads.groups(deployment)
    return []  # the proxy only appends


class Mode(enum.StrEnum):
    SINGLE = "single"
    ROLE = "role"
    PARTITIONS = "partitions"
    LAUNCHER = "launcher"
    REPLICAS = "replicas"

    @property
    def supervised(self) -> bool:
        """Served by children that the supervisor starts, rather than in this process."""
        return self in (Mode.PARTITIONS, Mode.LAUNCHER, Mode.REPLICAS)


MAX_PROCESSES = 64


@dataclass(frozen=True, slots=True)
class Topology:
    """How to serve, as ``rendezvous serve``'s options say it; ``check()`` refuses options
    that mean nothing together, naming the fix.

    >>> Topology("embedded", processes=2).check().mode
    <Mode.PARTITIONS: 'partitions'>
    """

    streams: str = "embedded"
    processes: int = 1
    roles: Roles | None = None  # None: every role
    replicas: int = 1
    monitor_port: int | None = None
    registry_url: str | None = None
    reset_log: bool = False
    partition: int | None = None  # this process is partition I of PARTITIONS (set by its plan)

    @property
    def mode(self) -> Mode:
        from rendezvous.streams.base import engine

        if self.processes > 1:
            return Mode.PARTITIONS
        if engine(self.streams).starts_server:
            return Mode.LAUNCHER
        if self.roles is None:
            return Mode.SINGLE
        return Mode.REPLICAS if self.replicas > 1 else Mode.ROLE

    def check(self) -> Topology:
        from rendezvous.streams.base import engine

        eng = engine(self.streams)
        if not 1 <= self.processes <= MAX_PROCESSES:
            raise ConfigError(f"--processes {self.processes} is out of range; use 1 to "
                              f"{MAX_PROCESSES}")
        if self.processes > 1 and (eng.partitions is None or self.roles is not None):
            raise ConfigError("--processes partitions the embedded engine; on NATS run "
                              "several proxies or --replicas workers instead")
        if self.processes > 1 and self.registry_url:
            raise ConfigError("--processes shares the SQLite registry under --home between its "
                              "processes and takes no --registry; drop --registry, or serve "
                              "with --streams nats://… where every role takes it")
        if eng.starts_server and self.roles is not None:
            raise ConfigError(f"--streams {self.streams} starts every role itself; to run one "
                              "role, point it at a running server: --streams nats://HOST:PORT")
        if self.replicas > 1 and not eng.starts_server and (
                self.roles is None or ProcessRole.WORKER not in self.roles):
            raise ConfigError("--replicas counts worker processes per model; use it with "
                              "--role worker or --streams local-nats")
        if self.reset_log and eng.partitions is None:
            raise ConfigError(f"--reset-log starts an embedded log afresh; {self.streams} keeps "
                              "its streams in its own server")
        if self.partition is not None and (eng.partitions is None or self.processes > 1
                                           or self.roles is not None
                                           or not 0 <= self.partition < MAX_PROCESSES):
            raise ConfigError("--partition is how `serve --processes N` starts its processes; "
                              "run `rendezvous serve --processes N` instead")
        if self.monitor_port is not None and not eng.starts_server:
            raise ConfigError("--monitor-port applies to --streams local-nats; a --role monitor "
                              "process serves its status on --port")
        return self
