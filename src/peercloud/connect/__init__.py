"""Reaching peers: signed peer records, the address book, and one dialer per kind of path."""
