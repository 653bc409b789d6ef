# Types for the Cython build of reply_parser.py (an "augmenting" .pxd: the .py source stays pure Python).
# Only byte positions within the buffer are C integers; lengths read from the wire stay Python ints.
import cython


cdef class ReplyParser:
    cdef bytearray _buf
    cdef bint _decode
    cdef object _error
    cdef Py_ssize_t _pos
    cdef Py_ssize_t _scan
    cdef list _stack

    @cython.locals(pos=Py_ssize_t)
    cpdef feed(self, data)

    cpdef next_reply(self)

    @cython.locals(
        buf=bytearray, n=Py_ssize_t, p=Py_ssize_t, scan=Py_ssize_t, nl=Py_ssize_t, stack=list,
        q=Py_ssize_t, stop=Py_ssize_t, c=Py_ssize_t, digits=Py_ssize_t, number=Py_ssize_t, kind=Py_ssize_t,
        start=Py_ssize_t, items=list, expected=Py_ssize_t,
    )
    cdef object _parse_one(self)
