"""soloist: music recordings to backing->solo training data."""
