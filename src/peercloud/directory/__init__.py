"""The directory role: a rendezvous that keeps signed peer records and tells callers where it sees
them from. It introduces peers and never carries their data."""
