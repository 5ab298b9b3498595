"""A handler module a test worker loads through PULSE_HANDLER_MODULES."""

from pulse_core.handlers import handler


@handler("extra.reverse")
def reverse(payload, ctx):
    return {"reversed": str(payload.get("text", ""))[::-1]}
