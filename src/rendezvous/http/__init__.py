"""The HTTP edge."""

from rendezvous.http.app import Proxy

__all__ = ["Proxy"]
