"""Synthetic identities: checks that keep them synthetic (:mod:`.leakage`, the identity-leakage check)."""
