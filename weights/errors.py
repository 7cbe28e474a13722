class WeightsError(Exception):
    """A checkpoint could not be loaded. The message is one line that names the file and the problem."""
