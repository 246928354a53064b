"""Failures the user can act on: their message says what happened and what to do."""


class StageError(RuntimeError):
    """An expected stop of a stage (bad input, pending review, too little data).

    Runners print the message without a traceback and exit non-zero.
    """
