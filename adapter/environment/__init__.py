"""Local environment stores (L2): one built environment per cache key."""
