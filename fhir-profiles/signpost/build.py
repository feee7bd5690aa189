#!/usr/bin/env python3
"""Build Signpost's own conformance resources into fhir-profiles/signpost/.

This script is where Signpost's profiles, extension, code systems and value sets are authored:
each StructureDefinition is written as a differential, and its snapshot is generated from the
official R4 4.0.1 base definitions (npm package hl7.fhir.r4.examples@4.0.1, CC0). Run from
anywhere with npm on the PATH:

    python3 fhir-profiles/signpost/build.py

src/fhir/profiles.rs embeds the JSON files this writes; it validates instances against each
profile's differential on top of the base validation (every Signpost profile derives directly
from an R4 resource, so the base plus the differential is the whole snapshot).
"""
import copy
import json
import os
import subprocess
import tarfile
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
BASE = "https://signpost.example/fhir"
R4 = "http://hl7.org/fhir/StructureDefinition/"
PACKAGE = "hl7.fhir.r4.examples@4.0.1"

# ---------------------------------------------------------------------------------------------
# Code systems (each with the value set of all its codes)

CODE_SYSTEMS = {
    "referral-outcome": (
        "Referral outcome",
        "Where a referral stands at the charity, for Task.businessStatus: stages of contact and support, then the outcome.",
        [
            ("delivered", "Delivered", "The referral reached the charity's system or inbox."),
            ("viewed", "Viewed", "Someone at the charity opened the referral."),
            ("contact-attempted", "Contact attempted", "The charity tried to contact the patient."),
            ("contacted", "Contacted", "The charity spoke with or wrote to the patient."),
            ("appointment-booked", "Appointment booked", "A first appointment or call is booked."),
            ("waitlisted", "Waitlisted", "The patient is on the charity's waiting list."),
            ("support-started", "Support started", "The patient is receiving support."),
            ("support-completed", "Support completed", "The support offered was delivered."),
            ("signposted-elsewhere", "Signposted elsewhere", "The charity directed the patient to another service."),
            ("declined-by-patient", "Declined by patient", "The patient chose not to take up support."),
            ("could-not-contact", "Could not contact", "The charity could not reach the patient."),
            ("needs-patient-action", "Needs patient action", "The charity waits for the patient (a form, a call back)."),
            ("rerouted", "Rerouted", "Set by Signpost on a rejected Task: the referral went on to the next fitting service."),
            ("no-service-left", "No service left",
             "Set by Signpost on a rejected Task: no other fitting service is left; the referrer should act."),
        ],
    ),
    "support-outcome": (
        "Support outcome",
        "What came of a referral, for Task.output when the charity completes its Task (the message back to the GP).",
        [
            ("support-started", "Support started", "The patient started receiving support and it continues."),
            ("support-completed", "Support completed", "The support offered was delivered to the end."),
            ("advice-given", "Advice and information given", "One-off advice or information; no further support needed."),
            ("peer-support-joined", "Joined peer support", "The patient joined a group or was matched with a peer."),
            ("referred-elsewhere", "Referred elsewhere", "The charity referred the patient on to another service."),
            ("declined-after-contact", "Declined after contact", "The patient was contacted and chose not to take up support."),
            ("did-not-engage", "Did not engage", "The patient did not attend or stopped responding."),
        ],
    ),
    "rejection-reason": (
        "Referral rejection, failure and cancellation reason",
        "Why a charity rejected a referral or could not complete it, or why it was cancelled, for Task.statusReason.",
        [
            ("out-of-area", "Out of area", "The patient lives outside the area the service covers."),
            ("not-eligible", "Not eligible", "The patient does not meet the service's eligibility criteria."),
            ("service-full", "Service full", "The service has no capacity."),
            ("duplicate", "Duplicate", "The charity already holds this referral."),
            ("insufficient-information", "Insufficient information", "The referral lacks what the charity needs to act."),
            ("patient-declined", "Patient declined", "The patient declined the service."),
            ("could-not-contact", "Could not contact", "The charity could not reach the patient."),
            ("consent-withdrawn", "Consent withdrawn", "The patient withdrew consent to share."),
            ("cannot-meet-contact-preference", "Cannot meet contact preference",
             "The charity cannot contact the patient the way the patient asked to be contacted."),
            ("referral-revoked", "Referral revoked", "The referrer revoked the referral; Signpost cancelled its open Tasks."),
            ("referral-entered-in-error", "Referral entered in error",
             "The referral was sent by mistake; Signpost cancelled its open Tasks."),
            ("cancelled-by-referrer", "Cancelled by referrer", "The referrer cancelled this Task."),
            ("other", "Other", "Another reason, given in statusReason.text."),
        ],
    ),
    "contact-preference": (
        "Contact preference",
        "How the patient prefers a charity to contact them.",
        [
            ("phone", "Phone", "A phone call."),
            ("sms", "Text message", "A text message to a mobile number."),
            ("email", "Email", "An email."),
            ("letter", "Letter", "A letter to the patient's address."),
            ("any", "Any", "No preference."),
        ],
    ),
    "service-capacity": (
        "Service capacity",
        "Whether a charity's service takes new referrals now (extension service-capacity on HealthcareService).",
        [
            ("open", "Open", "The service takes new referrals."),
            ("waitlist", "Waiting list", "The service takes new referrals onto a waiting list; routing flags the Task as waitlisted."),
            ("closed", "Closed", "The service takes no new referrals; routing skips it."),
        ],
    ),
    "contact-mode": (
        "Contact mode",
        "How a charity's service can contact and support a patient (extension service-contact-mode on HealthcareService). Phone, letter and in-person are non-digital; sms, email and video are digital.",
        [
            ("phone", "Phone", "Phone calls (non-digital)."),
            ("letter", "Letter", "Letters by post (non-digital)."),
            ("in-person", "In person", "Face-to-face meetings or visits (non-digital)."),
            ("sms", "Text message", "Text messages (digital)."),
            ("email", "Email", "Email (digital)."),
            ("video", "Video call", "Video calls (digital)."),
        ],
    ),
    "consent-category": (
        "Signpost consent category",
        "Kinds of consent Signpost relies on.",
        [
            ("share-with-vcs", "Share with the voluntary and community sector",
             "The patient agrees that their referral details are shared with the charity (voluntary and community sector organisation) named in the referral."),
        ],
    ),
}


def header(resource_type, name, title, description):
    """The metadata every Signpost conformance resource carries."""
    return {
        "resourceType": resource_type,
        "id": name,
        "url": f"{BASE}/{resource_type}/{name}",
        "version": "0.1.0",
        "name": "".join(w.capitalize() for w in name.split("-")),
        "title": title,
        "status": "active",
        "experimental": False,
        "publisher": "Signpost",
        "description": description,
    }


def code_system(name, title, description, concepts):
    return {
        **header("CodeSystem", name, title, description),
        "caseSensitive": True,
        "valueSet": f"{BASE}/ValueSet/{name}",
        "content": "complete",
        "count": len(concepts),
        "concept": [{"code": c, "display": d, "definition": x} for c, d, x in concepts],
    }


def value_set(name, title, description):
    return {
        **header("ValueSet", name, title, description),
        "compose": {"include": [{"system": f"{BASE}/CodeSystem/{name}"}]},
    }


# ---------------------------------------------------------------------------------------------
# Profiles (differentials)

def fixed(ident, path, kind, value, **more):
    return dict(id=ident, path=path, **{f"fixed{kind}": value}, **more)


PROFILES = {
    "signpost-referral-servicerequest": ("ServiceRequest", "Signpost referral ServiceRequest",
        "A referral from a GP or hospital system to a charity: who it is for, who asks, which charity service (performer) and when.", [
        {"id": "ServiceRequest.authoredOn", "path": "ServiceRequest.authoredOn", "min": 1},
        {"id": "ServiceRequest.requester", "path": "ServiceRequest.requester", "min": 1},
        {"id": "ServiceRequest.performer", "path": "ServiceRequest.performer",
         "short": "The charity service (HealthcareService) or charity (Organization) the referral is for; without it, the sender routes by posting Tasks"},
        {"id": "ServiceRequest.reasonCode", "path": "ServiceRequest.reasonCode",
         "short": "Why the patient is referred (a referral needs reasonCode or reasonReference: business rule reason-missing)"},
        {"id": "ServiceRequest.subject", "path": "ServiceRequest.subject",
         "type": [{"code": "Reference", "targetProfile": [R4 + "Patient"]}]},
    ]),
    "signpost-referral-task": ("Task", "Signpost referral Task",
        "The charity's piece of work for one referral: its owner is the charity; status, businessStatus, statusReason and output carry the charity's feedback.", [
        {"id": "Task.intent", "path": "Task.intent", "fixedCode": "order"},
        {"id": "Task.focus", "path": "Task.focus", "min": 1,
         "type": [{"code": "Reference", "targetProfile": [R4 + "ServiceRequest"]}]},
        {"id": "Task.for", "path": "Task.for", "min": 1, "type": [{"code": "Reference", "targetProfile": [R4 + "Patient"]}]},
        {"id": "Task.owner", "path": "Task.owner", "min": 1},
        {"id": "Task.businessStatus", "path": "Task.businessStatus",
         "binding": {"strength": "extensible", "valueSet": f"{BASE}/ValueSet/referral-outcome"}},
        {"id": "Task.statusReason", "path": "Task.statusReason",
         "binding": {"strength": "extensible", "valueSet": f"{BASE}/ValueSet/rejection-reason"}},
        {"id": "Task.output.value[x]", "path": "Task.output.value[x]",
         "short": "A completed Task carries an output whose valueCodeableConcept has a support-outcome code",
         "binding": {"strength": "extensible", "valueSet": f"{BASE}/ValueSet/support-outcome"}},
    ]),
    "signpost-patient": ("Patient", "Signpost Patient",
        "The patient of a referral: identified by NHS number, with the contact details and preference a charity needs.", [
        {"id": "Patient.extension", "path": "Patient.extension",
         "slicing": {"discriminator": [{"type": "value", "path": "url"}], "ordered": False, "rules": "open"}},
        {"id": "Patient.extension:contactPreference", "path": "Patient.extension", "sliceName": "contactPreference",
         "min": 0, "max": "1", "type": [{"code": "Extension", "profile": [f"{BASE}/StructureDefinition/contact-preference"]}]},
        fixed("Patient.extension:contactPreference.url", "Patient.extension.url", "Uri",
              f"{BASE}/StructureDefinition/contact-preference"),
        {"id": "Patient.extension:contactPreference.value[x]", "path": "Patient.extension.value[x]", "min": 1,
         "type": [{"code": "code"}],
         "binding": {"strength": "required", "valueSet": f"{BASE}/ValueSet/contact-preference"}},
        {"id": "Patient.identifier", "path": "Patient.identifier", "min": 1,
         "slicing": {"discriminator": [{"type": "value", "path": "system"}], "ordered": False, "rules": "open"}},
        {"id": "Patient.identifier:nhsNumber", "path": "Patient.identifier", "sliceName": "nhsNumber", "min": 1, "max": "1",
         "short": "The patient's NHS number"},
        fixed("Patient.identifier:nhsNumber.system", "Patient.identifier.system", "Uri", "https://fhir.nhs.uk/Id/nhs-number", min=1),
        {"id": "Patient.identifier:nhsNumber.value", "path": "Patient.identifier.value", "min": 1,
         "constraint": [{"key": "sp-pat-1", "severity": "error",
                         "human": "An NHS number is 10 digits, without spaces",
                         "expression": "matches('^[0-9]{10}$')", "source": f"{BASE}/StructureDefinition/signpost-patient"}]},
    ]),
    "signpost-consent-vcs": ("Consent", "Signpost Consent to share with the voluntary sector",
        "The patient's consent that their referral is shared with the charity named in it.", [
        {"id": "Consent.category", "path": "Consent.category",
         "slicing": {"discriminator": [{"type": "pattern", "path": "$this"}], "ordered": False, "rules": "open"}},
        {"id": "Consent.category:shareWithVcs", "path": "Consent.category", "sliceName": "shareWithVcs", "min": 1, "max": "1",
         "patternCodeableConcept": {"coding": [{"system": f"{BASE}/CodeSystem/consent-category", "code": "share-with-vcs"}]}},
        {"id": "Consent.patient", "path": "Consent.patient", "min": 1},
        {"id": "Consent.dateTime", "path": "Consent.dateTime", "min": 1},
    ]),
    "signpost-charity-healthcareservice": ("HealthcareService", "Signpost charity service",
        "A charity's referral service in the directory: the charity that provides it, what it supports (specialty) and whether it takes referrals (active).", [
        {"id": "HealthcareService.active", "path": "HealthcareService.active", "min": 1},
        {"id": "HealthcareService.providedBy", "path": "HealthcareService.providedBy", "min": 1},
        {"id": "HealthcareService.name", "path": "HealthcareService.name", "min": 1},
        {"id": "HealthcareService.specialty", "path": "HealthcareService.specialty", "min": 1},
    ]),
    "signpost-endpoint": ("Endpoint", "Signpost delivery endpoint",
        "Where Signpost delivers a charity's referrals: a signed webhook over HTTPS.", [
        {"id": "Endpoint", "path": "Endpoint",
         "constraint": [{"key": "sp-ep-1", "severity": "error",
                         "human": "Referrals are delivered over TLS: the address is an https URL (plain http only to a loopback receiver, for tests and the sandbox, where settings allow it)",
                         "expression": "address.startsWith('https://') or address.startsWith('http://127.0.0.1:') or address.startsWith('http://localhost:')", "source": f"{BASE}/StructureDefinition/signpost-endpoint"}]},
        {"id": "Endpoint.managingOrganization", "path": "Endpoint.managingOrganization", "min": 1},
    ]),
}

EXTENSIONS = {
    "contact-preference": ("Contact preference", "How the patient prefers a charity to contact them.", "Patient", [
        {"id": "Extension.url", "path": "Extension.url", "fixedUri": f"{BASE}/StructureDefinition/contact-preference"},
        {"id": "Extension.value[x]", "path": "Extension.value[x]", "min": 1, "type": [{"code": "code"}],
         "binding": {"strength": "required", "valueSet": f"{BASE}/ValueSet/contact-preference"}},
        {"id": "Extension.extension", "path": "Extension.extension", "max": "0"},
    ]),
    "service-capacity": ("Service capacity", "Whether the service takes new referrals now: open, waitlist or closed. Routing skips closed services and flags waitlisted Tasks.", "HealthcareService", [
        {"id": "Extension.url", "path": "Extension.url", "fixedUri": f"{BASE}/StructureDefinition/service-capacity"},
        {"id": "Extension.value[x]", "path": "Extension.value[x]", "min": 1, "type": [{"code": "code"}],
         "binding": {"strength": "required", "valueSet": f"{BASE}/ValueSet/service-capacity"}},
        {"id": "Extension.extension", "path": "Extension.extension", "max": "0"},
    ]),
    "service-contact-mode": ("Service contact mode", "One way the service can contact and support a patient (repeat for each). A service that states none is taken to offer every mode.", "HealthcareService", [
        {"id": "Extension.url", "path": "Extension.url", "fixedUri": f"{BASE}/StructureDefinition/service-contact-mode"},
        {"id": "Extension.value[x]", "path": "Extension.value[x]", "min": 1, "type": [{"code": "code"}],
         "binding": {"strength": "required", "valueSet": f"{BASE}/ValueSet/contact-mode"}},
        {"id": "Extension.extension", "path": "Extension.extension", "max": "0"},
    ]),
    "service-age-range": ("Service age range", "The ages (in years, unit a) the service is for, at the referral date; low and high are inclusive and either may be absent.", "HealthcareService", [
        {"id": "Extension.url", "path": "Extension.url", "fixedUri": f"{BASE}/StructureDefinition/service-age-range"},
        {"id": "Extension.value[x]", "path": "Extension.value[x]", "min": 1, "type": [{"code": "Range"}]},
        {"id": "Extension.extension", "path": "Extension.extension", "max": "0"},
    ]),
    "coverage-postcode": ("Coverage postcode", "A UK postcode area (LS) or district (LS6) that a coverage Location includes (repeat for each).", "Location", [
        {"id": "Extension.url", "path": "Extension.url", "fixedUri": f"{BASE}/StructureDefinition/coverage-postcode"},
        {"id": "Extension.value[x]", "path": "Extension.value[x]", "min": 1, "type": [{"code": "string"}],
         "constraint": [{"key": "sp-cov-1", "severity": "error",
                         "human": "A postcode area (one or two letters) or district (area and district number, optionally a letter), upper case, no spaces",
                         "expression": "matches('^[A-Z]{1,2}([0-9][0-9A-Z]?)?$')", "source": f"{BASE}/StructureDefinition/coverage-postcode"}]},
        {"id": "Extension.extension", "path": "Extension.extension", "max": "0"},
    ]),
}


# ---------------------------------------------------------------------------------------------
# Snapshot generation

def npm_base():
    tmp = tempfile.mkdtemp()
    subprocess.run(["npm", "pack", PACKAGE, "--silent"], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
    tgz = next(f for f in os.listdir(tmp) if f.endswith(".tgz"))
    with tarfile.open(os.path.join(tmp, tgz)) as t:
        t.extractall(tmp, filter="data")
    return os.path.join(tmp, "package")


def base_sd(pkg, name):
    with open(os.path.join(pkg, f"StructureDefinition-{name}.json")) as f:
        return json.load(f)


OVERRIDES = ("min", "max", "short", "type", "binding", "slicing", "sliceName", "mustSupport")


def expand_children(pkg, snapshot, el):
    """Add the children of a complex element (from its datatype) if the snapshot lacks them."""
    prefix = el["id"] + "."
    if any(e["id"].startswith(prefix) for e in snapshot):
        return
    code = el["type"][0]["code"]
    dt = base_sd(pkg, code)["snapshot"]["element"]
    at = snapshot.index(el) + 1
    for d in dt[1:]:
        c = copy.deepcopy(d)
        rest = d["id"][len(code):]
        c["id"] = el["id"] + rest
        c["path"] = el["path"] + d["path"][len(code):]
        snapshot.insert(at, c)
        at += 1


def snapshot_of(pkg, base_type, differential):
    snap = copy.deepcopy(base_sd(pkg, base_type)["snapshot"]["element"])
    for d in differential:
        if "sliceName" in d:
            sliced_id = d["id"].rsplit(":", 1)[0]
            base_el = next(e for e in snap if e["id"] == sliced_id)
            expand_children(pkg, snap, base_el)
            kids = [e for e in snap if e["id"].startswith(sliced_id + ".")]
            # Slices go after the sliced element, its children and the slices before.
            last = max([snap.index(base_el)] + [snap.index(e) for e in snap if e["id"].startswith(sliced_id + ":") or e in kids])
            new = [copy.deepcopy(base_el)] + [copy.deepcopy(k) for k in kids]
            for n in new:
                n["id"] = d["id"] + n["id"][len(sliced_id):]
                n.pop("slicing", None)
            for k, n in enumerate(new):
                snap.insert(last + 1 + k, n)
            target = new[0]
        else:
            target = next((e for e in snap if e["id"] == d["id"]), None)
            if target is None:
                parent_id = d["id"].rsplit(".", 1)[0]
                expand_children(pkg, snap, next(e for e in snap if e["id"] == parent_id))
                target = next(e for e in snap if e["id"] == d["id"])
        for k, v in d.items():
            if k in ("id", "path"):
                continue
            if k == "constraint":
                target["constraint"] = target.get("constraint", []) + v
            elif k in OVERRIDES or k.startswith("fixed") or k.startswith("pattern"):
                target[k] = v
    return snap


def structure_definition(pkg, name, base_type, title, description, differential, kind="resource", context=None):
    sd = {
        **header("StructureDefinition", name, title, description),
        "fhirVersion": "4.0.1",
        "kind": kind,
        "abstract": False,
    }
    if context:
        sd["context"] = [{"type": "element", "expression": context}]
    sd.update({
        "type": base_type,
        "baseDefinition": R4 + base_type,
        "derivation": "constraint",
        "snapshot": {"element": snapshot_of(pkg, base_type, differential)},
        "differential": {"element": differential},
    })
    return sd


def write(resource):
    path = os.path.join(HERE, f"{resource['resourceType']}-{resource['id']}.json")
    with open(path, "w") as f:
        json.dump(resource, f, indent=2, ensure_ascii=False)
        f.write("\n")


def main():
    pkg = npm_base()
    for name, (title, description, concepts) in CODE_SYSTEMS.items():
        write(code_system(name, title, description, concepts))
        write(value_set(name, title, description))
    for name, (base_type, title, description, diff) in PROFILES.items():
        write(structure_definition(pkg, name, base_type, title, description, diff))
    for name, (title, description, context, diff) in EXTENSIONS.items():
        write(structure_definition(pkg, name, "Extension", title, description, diff, kind="complex-type", context=context))


if __name__ == "__main__":
    main()
