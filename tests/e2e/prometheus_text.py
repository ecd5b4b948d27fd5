"""Reading samples out of Prometheus' text exposition format (what attnd
serves at /metrics), for the Python end-to-end tests."""

import re

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*"')


def sample_value(text, name, labels):
    """The value of the sample `name{labels}` (labels compared as a set, so
    every label must be given), or None when there is no such sample."""
    wanted = set(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or match.group(1) != name:
            continue
        if set(_LABEL.findall(match.group(3) or "")) == wanted:
            return float(match.group(4))
    return None
