"""Names: buckets of keys that map to objects, kept in the cloud as writers' encrypted, signed logs."""
