"""`python tests/support/kill_at_rename.py NAME MODULE ARGS...`: runs `python -m MODULE ARGS...`, killed (exit 9,
as by kill -9: no cleanup, no flush) at the moment it would rename a finished temporary file onto NAME.
The fault injection for "a kill during each file rewrite": what the command wrote before survives."""
import os
import runpy
import sys

name, module, args = sys.argv[1], sys.argv[2], sys.argv[3:]
real_replace = os.replace


def replace(src, dst, *a, **k):
    if os.path.basename(os.fspath(dst)) == name:
        os._exit(9)
    return real_replace(src, dst, *a, **k)


os.replace = replace
sys.argv = [module, *args]
runpy.run_module(module, run_name="__main__", alter_sys=True)
