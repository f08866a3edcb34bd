"""Reading the evidence archive: replay, what-if evaluation of policies, promotion gates."""
