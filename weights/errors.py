class WeightsError(Exception):
    """A checkpoint could not be loaded. The message is one line that names the file and the problem."""


class NonFiniteLogitsError(WeightsError):
    """The logits are NaN or infinite, so no token can be drawn. A WeightsError because its usual cause is the
    checkpoint (NaN or infinite weights, which the loader leaves the sampler to catch: see weights/loader.py);
    the other is a dtype too narrow for the weights' values (float16 overflowing). The message is one line."""
