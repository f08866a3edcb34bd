"""The roles of a deployment (DESIGN.md §1) as async shells around the pure core: the worker,
the rendezvous server, the decoy and the monitor. Hosting (``rendezvous.hosting``) decides
which process runs which of them."""
