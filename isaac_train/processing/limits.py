"""Isaac's image limits, in a module of their own: data conversion, shard checks and config checks read them
without importing the image processor (torch, transformers)."""

MAX_PIXELS = 60_000_000  # Isaac's processor refuses larger images (isaac_spec.md section 3)
