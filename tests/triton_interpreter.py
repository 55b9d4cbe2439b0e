"""A faster Triton interpreter for the test suite: the language patched once per kernel launch.

Under TRITON_INTERPRET=1 a kernel launch (triton.runtime.interpreter.GridExecutor) swaps
triton.language's builtins for interpreted ones, then runs every program. Each call of a
`@triton.jit` helper inside it (InterpretedFunction.__call__) swaps them again: five
`inspect.getmembers` scans of triton.language for nothing, as the launch's swap is still in
place for the helpers that see the same language modules (triton.language in mergefast's
kernels; triton.language.core in triton's own helpers such as tl.sum, whose first call patches
that module). On the 2-vCPU VM those scans were 42 s of the 110 s of
`test_one_read_equals_two_passes` under cProfile (162,277 scans); the interpreted suites took
311 s of the 583 s suite.

`patch_once_per_launch()` makes a helper call inside a launch keep the launch's swap. It changes
nothing else: the launch patches, runs and restores as before, and a helper called outside a
launch patches as before. It does nothing where this triton's interpreter lacks the functions
it wraps (another version), so a triton upgrade can make the suite slower, never wrong.
"""

from __future__ import annotations

import importlib.util
import threading


def patch_once_per_launch() -> bool:
    """Wrap the interpreter's language patching as above; whether it was wrapped."""
    if importlib.util.find_spec("triton") is None:
        return False
    from triton.runtime import interpreter

    patch, launch = getattr(interpreter, "_patch_lang", None), getattr(interpreter, "GridExecutor", None)
    scope_class = getattr(interpreter, "_LangPatchScope", None)
    if patch is None or launch is None or scope_class is None or getattr(patch, "_once_per_launch", False):
        return False
    run_launch = launch.__call__
    state = threading.local()  # per thread: for each launch running, the language modules it has patched
    languages = (interpreter.tl, interpreter.tl.core)

    def patch_lang(fn):
        launches = getattr(state, "launches", None)
        seen = frozenset(id(v) for v in fn.__globals__.values() if any(v is m for m in languages))
        if launches and seen in launches[-1]:
            return scope_class()  # nothing to restore: the launch's swap stays in place
        scope = patch(fn)
        if launches:
            launches[-1].add(seen)
        return scope

    def run(self, *args, **kwargs):
        launches = state.__dict__.setdefault("launches", [])
        launches.append(set())
        try:
            return run_launch(self, *args, **kwargs)
        finally:
            launches.pop()

    patch_lang._once_per_launch = True
    interpreter._patch_lang = patch_lang
    launch.__call__ = run
    return True
