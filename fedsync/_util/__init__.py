"""Internal helpers every layer may use; imports nothing of fedsync but :mod:`fedsync.errors`."""
