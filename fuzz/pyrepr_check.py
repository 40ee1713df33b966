#!/usr/bin/env python3
"""Reads pyrepr-check's JSON lines on stdin and checks the guest's reprs with Python itself.

Must hold: `ast.literal_eval` accepts the guest's `repr(text)` and gives back `text`, and accepts the
list inside `ImmutableMultiDict([...])` and gives back the pairs. Then each is compared with this
CPython's own `repr`: a difference only on unassigned code points (category Cn) is the documented
approximation of guest/core/src/pyrepr.rs and is counted; any other difference fails.
"""
import ast
import json
import sys
import unicodedata

checked = broken = unassigned = 0
odd = set()


def mismatched(texts, guest):
    """Non-ASCII characters the guest shows as they are where CPython escapes them, or the reverse."""
    return {c for text in texts for c in text if not c.isascii() and (c in guest) != c.isprintable()}


for line in sys.stdin:
    item = json.loads(line)
    checked += 1
    pairs = [tuple(pair) for pair in item["pairs"]]
    problems = []
    try:
        if ast.literal_eval(item["repr"]) != item["text"]:
            problems.append("repr reads back as another string")
    except (ValueError, SyntaxError) as error:
        problems.append(f"repr does not parse: {error}")
    args = item["args"]
    try:
        if not args.startswith("ImmutableMultiDict(") or ast.literal_eval(args[19:-1]) != pairs:
            problems.append("args read back as other pairs")
    except (ValueError, SyntaxError) as error:
        problems.append(f"args do not parse: {error}")
    for guest, python, texts in [
        (item["repr"], repr(item["text"]), [item["text"]]),
        (args, f"ImmutableMultiDict({pairs!r})", [s for pair in pairs for s in pair]),
    ]:
        if guest != python:
            chars = mismatched(texts, guest)
            if chars and all(unicodedata.category(c) == "Cn" for c in chars):
                unassigned += 1
                odd.update(chars)
            else:
                problems.append(f"guest {guest!r} != CPython {python!r}")
    if problems:
        broken += 1
        print(f"BROKEN {item['file']}: {'; '.join(problems)}")
version = f"CPython {sys.version.split()[0]}, Unicode {unicodedata.unidata_version}"
print(f"{checked} inputs checked against {version}: {broken} broken, "
      f"{unassigned} reprs differ only on unassigned code points"
      f"{' (' + ' '.join(f'U+{ord(c):04X}' for c in sorted(odd)) + ')' if odd else ''}")
sys.exit(1 if broken else 0)
