"""Rendezvous: run ML models in production the rendezvous way.

Every request goes to a durable stream, every live model version scores it, the best answer
ready before the deadline is returned, and inputs, scores and decisions are kept for replay.

>>> from rendezvous import Registry, Policy, ModelSpec, Role
"""

from rendezvous.core.policy import ModelSpec, Policy, Role
from rendezvous.core.schema import Column, Datatype, Signature
from rendezvous.errors import RendezvousError
from rendezvous.flavors.python import CallableModel
from rendezvous.registry import Registry

__all__ = [
    "CallableModel",
    "Column",
    "Datatype",
    "ModelSpec",
    "Policy",
    "Registry",
    "RendezvousError",
    "Role",
    "Signature",
]
