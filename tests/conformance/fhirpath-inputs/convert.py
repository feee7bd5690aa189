#!/usr/bin/env python3
"""Convert the FHIRPath suite's XML inputs (tests/fixtures/fhirpath/*.xml) to FHIR JSON, next to
this script, using Signpost's bundled R4 definitions for element types and repetition. The suite's
inputs differ from the published examples of the same name, so they are converted, not replaced.

    python3 tests/conformance/fhirpath-inputs/convert.py
"""
import json
import os
import xml.etree.ElementTree as ET

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "../../.."))
CORPUS = os.path.join(ROOT, "tests/fixtures/fhirpath")
FHIR = "{http://hl7.org/fhir}"
XHTML = "{http://www.w3.org/1999/xhtml}"
DEFS = json.load(open(os.path.join(ROOT, "fhir-profiles/r4/definitions.json")))["types"]
NUMBERS = {"integer", "decimal", "positiveInt", "unsignedInt"}


def children(type_name, path):
    return [e for e in DEFS[type_name]["elements"] if e["path"].rsplit(".", 1)[0] == path and "." in e["path"]]


def find(type_name, path, name):
    for e in children(type_name, path):
        last = e["path"].rsplit(".", 1)[1]
        if last == name:
            return e, (e.get("types") or [{"code": "BackboneElement"}])[0]["code"]
        if last.endswith("[x]") and name.startswith(last[:-3]):
            suffix = name[len(last) - 3:]
            for t in e.get("types", []):
                if t["code"][0].upper() + t["code"][1:] == suffix:
                    return e, t["code"]
    raise KeyError(f"{path}.{name}")


def primitive(code, text):
    if code == "boolean":
        return text == "true"
    if code in NUMBERS:
        return int(text) if code != "decimal" else (float(text) if "." in text or "e" in text.lower() else int(text))
    return text


def convert(node, type_name, path):
    out = {}
    if "id" in node.attrib:
        out["id"] = node.attrib["id"]
    if "url" in node.attrib:
        out["url"] = node.attrib["url"]
    for child in node:
        if not isinstance(child.tag, str):
            continue
        if child.tag.startswith(XHTML):
            ET.register_namespace("", XHTML[1:-1])
            raw = ET.tostring(child, encoding="unicode").strip()
            out["div"] = raw
            continue
        name = child.tag[len(FHIR):]
        el, code = find(type_name, path, name)
        repeats = el["max"] != "1"
        if code in ("Resource",) or code in DEFS and DEFS[code]["kind"] == "resource":
            inner = list(child)[0]
            rtype = inner.tag[len(FHIR):]
            value, twin = dict(resourceType=rtype, **convert(inner, rtype, rtype)), None
        elif code in DEFS and DEFS[code]["kind"] == "primitive-type":
            value = primitive(code, child.attrib["value"]) if "value" in child.attrib else None
            ext = convert(child, code, code)
            twin = ext or None
        else:
            if "contentReference" in el:
                value = convert(child, type_name, el["contentReference"].lstrip("#"))
            elif children(type_name, el["path"]):
                value = convert(child, type_name, el["path"])
            else:
                value = convert(child, code, code)
            twin = None
        if repeats:
            out.setdefault(name, []).append(value)
            if twin is not None or f"_{name}" in out:
                arr = out.setdefault(f"_{name}", [None] * (len(out[name]) - 1))
                arr.append(twin)
        else:
            if value is not None:
                out[name] = value
            if twin is not None:
                out[f"_{name}"] = twin
    return out


def main():
    for f in sorted(os.listdir(CORPUS)):
        if not f.endswith(".xml") or f.startswith("tests-"):
            continue
        root = ET.parse(os.path.join(CORPUS, f)).getroot()
        rtype = root.tag[len(FHIR):]
        resource = dict(resourceType=rtype, **convert(root, rtype, rtype))
        with open(os.path.join(HERE, f.replace(".xml", ".json")), "w") as out:
            json.dump(resource, out, indent=2, ensure_ascii=False)
            out.write("\n")
        print("wrote", f.replace(".xml", ".json"))


if __name__ == "__main__":
    main()
