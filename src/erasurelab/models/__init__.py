"""erasurelab."""
