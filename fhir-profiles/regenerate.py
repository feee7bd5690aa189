#!/usr/bin/env python3
"""Regenerate fhir-profiles/r4/ from the official FHIR R4 4.0.1 definitions.

Source: npm package hl7.fhir.r4.examples@4.0.1 (CC0), which carries the R4 StructureDefinitions
(Bundle-types.json, Bundle-resources.json), value set expansions and code systems. Run from
anywhere with npm on the PATH:

    python3 fhir-profiles/regenerate.py

Only what validation needs is kept (no documentation texts), in a compact form read by
src/fhir/definitions.rs:
- r4/definitions.json: every datatype and resource StructureDefinition snapshot: element path,
  cardinality, types (with reference targets), bindings, fixed/pattern values, constraints;
  and the regex of every primitive type.
- r4/valuesets.json: the codes of each value set bound (required, extensible or preferred) in those
  definitions, from the official pre-expanded value sets; sets over 5,000 codes are left out
  (reported as not checked).
"""
import json
import os
import subprocess
import tarfile
import tempfile

PACKAGE = "hl7.fhir.r4.examples@4.0.1"
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "r4")
FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
REGEX_EXT = "http://hl7.org/fhir/StructureDefinition/regex"
MAX_CODES = 5000


def ext_value(node, url):
    for e in node.get("extension", []):
        if e.get("url") == url:
            for k, v in e.items():
                if k.startswith("value"):
                    return v
    return None


def compact_type(t):
    code = t["code"]
    if code.startswith("http://hl7.org/fhirpath/"):
        code = ext_value(t, FHIR_TYPE_EXT) or code.rsplit(".", 1)[-1].lower()
    out = {"code": code}
    targets = [p.rsplit("/", 1)[-1] for p in t.get("targetProfile", [])]
    if targets:
        out["targets"] = targets
    profiles = t.get("profile", [])
    if profiles:
        out["profiles"] = profiles
    return out


def compact_element(sd_type, sd_kind, el):
    out = {"path": el["path"], "min": el.get("min", 0), "max": el.get("max", "*")}
    if "sliceName" in el:
        out["sliceName"] = el["sliceName"]
    if "type" in el:
        types = [compact_type(t) for t in el["type"]]
        # The logical id of a resource is an `id`, whatever System type the snapshot names.
        if sd_kind == "resource" and el["path"] == f"{sd_type}.id":
            types = [{"code": "id"}]
        out["types"] = types
    if "contentReference" in el:
        out["contentReference"] = el["contentReference"].lstrip("#")
    b = el.get("binding")
    if b and b.get("valueSet"):
        out["binding"] = {"strength": b["strength"], "valueSet": b["valueSet"].split("|")[0]}
    for k, v in el.items():
        if k.startswith("fixed") or k.startswith("pattern"):
            out[k] = v
    cons = [
        {k: c[k] for k in ("key", "severity", "human", "expression") if k in c}
        for c in el.get("constraint", [])
        if c.get("key") != "ele-1" and "expression" in c
    ]
    if cons:
        out["constraints"] = cons
    if el.get("isModifier"):
        out["isModifier"] = True
    return out


PROFILE_KEYS = ("id", "path", "min", "max", "sliceName")


def compact_profile(sd):
    """A core profile or extension definition: its differential, in FHIR's own element keys."""
    elements = []
    for el in sd["differential"]["element"]:
        out = {k: el[k] for k in PROFILE_KEYS if k in el}
        if "slicing" in el:
            out["slicing"] = {k: el["slicing"][k] for k in ("discriminator", "rules") if k in el["slicing"]}
        for k, v in el.items():
            if k.startswith("fixed") or k.startswith("pattern"):
                out[k] = v
        b = el.get("binding")
        if b and b.get("valueSet") and b.get("strength") in ("required", "extensible"):
            out["binding"] = {"strength": b["strength"], "valueSet": b["valueSet"].split("|")[0]}
        if "type" in el:
            out["type"] = [{k: t[k] for k in ("code", "targetProfile", "profile") if k in t} for t in el["type"]]
        cons = [{k: c[k] for k in ("key", "severity", "human", "expression") if k in c}
                for c in el.get("constraint", []) if "expression" in c]
        if cons:
            out["constraint"] = cons
        elements.append(out)
    # Whether an extension is a modifier is said on its snapshot's root element.
    root = (sd.get("snapshot") or {}).get("element", [{}])[0]
    if sd["type"] == "Extension" and elements and "isModifier" in root:
        elements[0]["isModifier"] = root["isModifier"]
    out = {"resourceType": "StructureDefinition", "url": sd["url"], "type": sd["type"],
           "baseDefinition": sd.get("baseDefinition"), "differential": {"element": elements}}
    if sd.get("context"):
        out["context"] = sd["context"]
    return out


def main():
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["npm", "pack", PACKAGE, "--silent"], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
        tgz = next(f for f in os.listdir(tmp) if f.endswith(".tgz"))
        with tarfile.open(os.path.join(tmp, tgz)) as tar:
            def load(name):
                return json.load(tar.extractfile(f"package/{name}"))
            bundles = [load("Bundle-types.json"), load("Bundle-resources.json")]
            expansions = load("Bundle-valueset-expansions.json")
            constraints = [
                load(m.name[len("package/"):])
                for m in tar.getmembers()
                if m.name.startswith("package/StructureDefinition-") and m.name.endswith(".json")
            ]
            constraints = [sd for sd in constraints if sd.get("derivation") == "constraint"]

    types = {}
    regexes = {}
    bound = set()
    for bundle in bundles:
        for entry in bundle["entry"]:
            sd = entry["resource"]
            if sd.get("resourceType") != "StructureDefinition" or sd.get("derivation") == "constraint":
                continue
            if sd["kind"] == "logical":
                continue
            name = sd["type"]
            elements = [compact_element(name, sd["kind"], el) for el in sd["snapshot"]["element"]]
            for el in sd["snapshot"]["element"]:
                b = el.get("binding")
                if b and b.get("valueSet") and b.get("strength") in ("required", "extensible", "preferred"):
                    bound.add(b["valueSet"].split("|")[0])
                if sd["kind"] == "primitive-type" and el["path"] == f"{name}.value":
                    rx = ext_value(el["type"][0], REGEX_EXT)
                    if rx:
                        regexes[name] = rx
            types[name] = {
                "kind": sd["kind"],
                "abstract": sd.get("abstract", False),
                "base": (sd.get("baseDefinition") or "").rsplit("/", 1)[-1] or None,
                "elements": elements,
            }

    valuesets = {}
    for entry in expansions["entry"]:
        vs = entry["resource"]
        url = vs.get("url")
        if url not in bound:
            continue
        codes = []

        def walk(items):
            for c in items:
                if "code" in c and not c.get("abstract"):
                    codes.append(f"{c.get('system', '')}|{c['code']}")
                walk(c.get("contains", []))

        walk(vs.get("expansion", {}).get("contains", []))
        if 0 < len(codes) <= MAX_CODES:
            valuesets[url] = sorted(set(codes))

    profiles = [compact_profile(sd) for sd in sorted(constraints, key=lambda sd: sd["url"])]

    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "profiles.json"), "w") as f:
        json.dump(profiles, f, separators=(",", ":"), sort_keys=True)
        f.write("\n")
    with open(os.path.join(OUT, "definitions.json"), "w") as f:
        json.dump({"fhirVersion": "4.0.1", "types": types, "regex": regexes}, f, separators=(",", ":"), sort_keys=True)
        f.write("\n")
    with open(os.path.join(OUT, "valuesets.json"), "w") as f:
        json.dump(valuesets, f, separators=(",", ":"), sort_keys=True)
        f.write("\n")
    print(f"{len(types)} types, {len(regexes)} primitive regexes, {len(valuesets)} of {len(bound)} bound value sets, "
          f"{len(profiles)} profiles and extensions")


if __name__ == "__main__":
    main()
