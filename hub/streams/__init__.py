"""The faust app, its topics and thin agents: decode, call the pure core, route, send."""
