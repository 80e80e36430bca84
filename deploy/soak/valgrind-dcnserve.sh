#!/bin/sh
# valgrind-dcnserve.sh — dcnserve under valgrind memcheck, as a drop-in
# DCNSERVE for the Python tests (RELIABILITY.md has the run and its result):
#
#   DCNSERVE=deploy/soak/valgrind-dcnserve.sh /usr/bin/python3 tests/run_py.py test_server.
#
# DESIGN: memcheck's report goes to the server's stderr, which the
# integration tests read at stop: any "ERROR SUMMARY" other than 0 errors
# (invalid reads and writes, uninitialised values, definite or indirect
# leaks at exit) fails the test, and the exit status becomes 99. The binary
# is build/release/dcnserve (-O2 -g), or DCNSERVE_REAL. Under valgrind the
# CPU reports no AVX-512, so the AVX2 or scalar kernels run.
root=$(cd "$(dirname "$0")/../.." && pwd)
real=${DCNSERVE_REAL:-$root/build/release/dcnserve}
unset DCNSERVE_REAL # names no server option: dcnserve would warn about it
exec valgrind --tool=memcheck --error-exitcode=99 --leak-check=full \
    --show-leak-kinds=definite,indirect --errors-for-leak-kinds=definite,indirect \
    --num-callers=30 "$real" "$@"
