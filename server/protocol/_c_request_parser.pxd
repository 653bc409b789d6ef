# Types for the Cython build of request_parser.py (an "augmenting" .pxd: the .py source stays pure Python).
# Only byte positions within the buffer are C integers; every value read from the wire (counts, lengths)
# stays a Python int until it has passed the limits (at most LIMIT_CEILING), so an absurd
# "$99999999999999999999" overflows nothing and gets the pure core's error.
import cython


cdef class RequestParser:
    cdef public object error
    cdef public Py_ssize_t held
    cdef bytearray _buf
    cdef Py_ssize_t _pos
    cdef object _args
    cdef object _remaining
    cdef object _bulklen
    cdef Py_ssize_t _partial_bytes
    cdef Py_ssize_t _scan
    cdef object _max_bulk
    cdef object _max_count
    cdef Py_ssize_t _cap_bulk
    cdef Py_ssize_t _cap_count
    cdef bint _auth_required

    @cython.locals(buf=bytearray, pos=Py_ssize_t)
    cpdef feed(self, data)

    cpdef next_request(self)
    cpdef list parse_chunk(self, data)
    cpdef list parse_all(self)
    cdef _run(self, list out, Py_ssize_t limit)

    @cython.locals(
        buf=bytearray, n=Py_ssize_t, p=Py_ssize_t, scan=Py_ssize_t, window=Py_ssize_t,
        s=Py_ssize_t, nl=Py_ssize_t, done_before=Py_ssize_t, args=list,
        q=Py_ssize_t, stop=Py_ssize_t, c=Py_ssize_t, value=Py_ssize_t, end=Py_ssize_t,
        cap_bulk=Py_ssize_t, cap_count=Py_ssize_t,
    )
    cdef _parse(self, list out, Py_ssize_t limit)
