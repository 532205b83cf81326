"""The relay role: reservations for peers that cannot be reached directly, and circuits that splice
two peers' TCP streams. The two ends run Noise end to end inside: the relay copies ciphertext."""
