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


SPAWNED_LOADER = '''
import multiprocessing, sys, warnings
import multiturbo.data

OWN = multiturbo.data.__file__


class Warns:
    """Two items; reading one warns as multiturbo's own code does (a file of the package)."""

    def __len__(self):
        return 2

    def __getitem__(self, i):
        warnings.warn_explicit(f"item {i} was cut", UserWarning, OWN, 1)
        return i


def as_list(items):
    return items


if __name__ == "__main__":
    multiprocessing.set_start_method(sys.argv[1], force=True)  # spawn: the worker does not inherit the display
    if sys.argv[2] == "lines":
        from multiturbo.warning_lines import show_own_warnings_as_lines
        show_own_warnings_as_lines()
    loader = multiturbo.data.make_loader(Warns(), as_list, batch_size=2, shuffle=False, num_workers=1)
    assert [list(b) for b in loader] == [[0, 1]]
'''


def test_a_spawned_loader_worker_shows_warnings_as_its_parent_does(tmp_path):
    """Workers started by spawn (macOS; forkserver, Linux's default from Python 3.14, likewise) do
    not inherit the display: make_loader's worker_init_fn gives them the parent's, lines or not."""
    script = tmp_path / "spawned_loader.py"
    script.write_text(SPAWNED_LOADER)
    for display in ("lines", "python"):
        proc = subprocess.run([sys.executable, str(script), "spawn", display], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        shown = [line for line in proc.stderr.splitlines() if "was cut" in line]
        assert len(shown) == 2, proc.stderr
        if display == "lines":
            assert shown == ["warning: item 0 was cut", "warning: item 1 was cut"]
        else:
            assert all(line.endswith("UserWarning: item 0 was cut") or line.endswith("UserWarning: item 1 was cut") for line in shown)
