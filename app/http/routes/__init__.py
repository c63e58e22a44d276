"""HTTP routes, one module per resource; shared request plumbing lives in `common`."""
