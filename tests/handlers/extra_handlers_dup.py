"""Registers extra.reverse a second time: a worker loading both must refuse to start."""

from pulse_core.handlers import handler


@handler("extra.reverse")
def reverse_again(payload, ctx):
    return {}
