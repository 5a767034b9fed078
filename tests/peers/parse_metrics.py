#!/usr/bin/env python3
"""Reads a /metrics scrape on stdin and parses it with prometheus_client's
OpenMetrics parser, which is strict: the text must end in "# EOF", counter
samples must end in _total, histogram buckets must be cumulative and end in
le="+Inf", and no sample may appear outside its family. Checks that every
family has a HELP line and a TYPE line of its own. Prints one JSON object:
family name -> {"type", "help", "samples": [[name, labels, value], ...]};
exits 1 with the reason on stderr if the text does not parse or a family
lacks HELP or TYPE."""
import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families


def main():
    text = sys.stdin.read()
    lines = text.splitlines()
    helped = {l.split(" ")[2] for l in lines if l.startswith("# HELP ")}
    typed = {l.split(" ")[2] for l in lines if l.startswith("# TYPE ")}
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as e:
        sys.exit(f"not OpenMetrics: {e}")
    out = {}
    for f in families:
        if f.name not in helped or not f.documentation:
            sys.exit(f"{f.name}: no HELP")
        if f.name not in typed or f.type == "unknown":
            sys.exit(f"{f.name}: no TYPE")
        out[f.name] = {
            "type": f.type,
            "help": f.documentation,
            "samples": [[s.name, s.labels, s.value] for s in f.samples],
        }
    json.dump(out, sys.stdout)


main()
