"""Decisions from the evidence: replay, what-if evaluation of policies, promotion gates."""
