"""Plug-ins written the way a user would: each file registers one extension by name."""
