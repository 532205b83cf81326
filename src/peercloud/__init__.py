"""peercloud: a storage cloud made of ordinary peers."""

__version__ = "0.1.0"
