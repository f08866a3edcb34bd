"""The HTTP edge."""

from rendezvous.proxy.app import Proxy

__all__ = ["Proxy"]
