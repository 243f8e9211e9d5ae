"""One module per chat platform: wire payloads in as InboundEvents, replies out as calls."""
