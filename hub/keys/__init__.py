"""`hub keys`: administration of the sources' HMAC keys (rotation with an overlap window)."""
