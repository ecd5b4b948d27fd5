"""run(): a command's stdout, or an AssertionError with its exit status and
both outputs (the packaging tests' one way to call a tool)."""

import subprocess


def run(command, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, check=False, **kwargs)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited {result.returncode}:\n"
                             f"{result.stdout}\n{result.stderr}")
    return result.stdout
