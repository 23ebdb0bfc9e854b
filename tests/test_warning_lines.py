"""multiturbo's warnings on the command line: one line each; other libraries' as Python shows them."""

from __future__ import annotations

import os
import subprocess
import sys

import multiturbo
from multiturbo.warning_lines import own_code_roots, warning_line


def test_a_warning_line_names_the_category_unless_it_is_a_plain_user_warning():
    assert warning_line(UserWarning("hf_whisper: cut 1 of 32 items"), UserWarning) == "warning: hf_whisper: cut 1 of 32 items"
    assert warning_line("name 'x' is deprecated", DeprecationWarning) == "warning (DeprecationWarning): name 'x' is deprecated"


def test_the_roots_are_multiturbo_and_its_first_party_plugins():
    import multiturbo_hf

    roots = own_code_roots()
    assert os.path.join(os.path.dirname(multiturbo.__file__), "") in roots
    assert os.path.join(os.path.dirname(multiturbo_hf.__file__), "") in roots
    assert not any(os.path.dirname(os.__file__).startswith(r.rstrip(os.sep)) for r in roots)


def test_the_command_shows_its_own_warnings_as_lines_and_others_as_python_does():
    import multiturbo_hf

    own = os.path.join(os.path.dirname(multiturbo_hf.__file__), "_common.py")
    code = (
        "import warnings; from multiturbo.cli import main; from multiturbo.warning_lines import show_own_warnings_as_lines\n"
        "show_own_warnings_as_lines(); show_own_warnings_as_lines()  # twice: still one display\n"
        f"warnings.warn_explicit('hf_whisper: cut 1 of 32 items of this batch to max_seconds = 15.0.', UserWarning, {own!r}, 198)\n"
        "warnings.warn_explicit('a library speaks', FutureWarning, '/elsewhere/lib.py', 7)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0] == "warning: hf_whisper: cut 1 of 32 items of this batch to max_seconds = 15.0."
    assert lines[1] == "/elsewhere/lib.py:7: FutureWarning: a library speaks"
    assert len(lines) == 2


def test_the_console_entry_point_installs_it():
    code = ("import sys, warnings; sys.argv = ['multiturbo', '--version']; from multiturbo.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "from multiturbo.warning_lines import show_warning; print(warnings.showwarning is show_warning)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.splitlines()[-1] == "True", proc.stdout + proc.stderr
