"""soloist: music recordings -> backing/solo tokens -> a model that plays along."""

__all__ = ["Soloist"]


def __getattr__(name: str):
    # torch loads only when the model is asked for: the Snakefile imports soloist.config
    if name == "Soloist":
        from soloist.model import Soloist

        return Soloist
    raise AttributeError(f"module 'soloist' has no attribute {name!r}")
