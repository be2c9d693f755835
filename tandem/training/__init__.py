"""Making drafters: EAGLE-3 heads distilled from a target (`tandem draft data|train|eval`)."""


class TrainingError(ValueError):
    """Input a draft command cannot work with (a folder without data, options that do not fit
    the head or the target): the command line says it in one line and exits with 2."""
