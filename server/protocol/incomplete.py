"""The marker a reply parser returns while a reply is still incomplete.

In its own module, outside the compiled core, so the pure and the mypyc-compiled
reply parsers return the very same object and ``reply is NOT_ENOUGH_DATA``
holds whichever core runs.
"""

from __future__ import annotations

from typing import Final


class _NotEnoughData:
    """The type of :data:`NOT_ENOUGH_DATA`; a singleton."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NOT_ENOUGH_DATA"


#: Returned by :meth:`ReplyParser.next_reply` while a reply is incomplete.
NOT_ENOUGH_DATA: Final = _NotEnoughData()
