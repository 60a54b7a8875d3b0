"""Planning, allocation and scheduling of graphs over backends."""
