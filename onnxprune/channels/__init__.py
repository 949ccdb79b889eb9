"""Structured analysis and surgery: which channels must be removed together, and removing them.

Ops the analysis does not know (custom-domain ops, say) block the channel groups they touch.
Declare their channel semantics with ``register_op``, for example an activation that acts on
each element alone::

    from onnxprune import channels
    channels.register_op("MyAct", channels.unary, domain="com.example")
"""

from onnxprune.channels.registry import register_op, registered_op, unregister_op
from onnxprune.channels.rules import blocking, elementwise, unary

__all__ = ["blocking", "elementwise", "register_op", "registered_op", "unary", "unregister_op"]
