#!/usr/bin/env python3
"""Write Signpost's example directory: one Bundle per charity (Organization, its
HealthcareServices, the Locations they cover and its webhook Endpoint), in this folder.

    python3 examples/directory/build.py

The charities are real UK charities; every contact detail is fictional (Ofcom's drama number
ranges, example.org.uk addresses). The directory is embedded in the binary for sandbox mode
(src/sandbox/mod.rs lists the files). referrers.json and operator.json are written by hand.

A service states: the conditions it serves (specialty, SNOMED CT), its coverage (coverageArea:
Locations listing postcode areas or districts; none = all of the UK), ages (service-age-range),
languages (communication), how it can contact a patient (service-contact-mode), and whether it
takes referrals now (service-capacity).
"""
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
SP = "https://signpost.example/fhir/StructureDefinition"
SNOMED = "http://snomed.info/sct"
CHARITY_NUMBER = "https://www.gov.uk/government/organisations/charity-commission/Id/charity-number"

# Coverage areas: id -> (name, postcode areas/districts).
AREAS = {
    "leeds": ("Leeds", ["LS"]),
    "west-yorkshire": ("West Yorkshire", ["LS", "BD", "WF", "HX", "HD"]),
    "bradford": ("Bradford", ["BD"]),
    "london": ("Greater London", ["E", "EC", "N", "NW", "SE", "SW", "W", "WC"]),
    "greater-manchester": ("Greater Manchester", ["M", "OL", "BL", "SK", "WN"]),
}

# Conditions (SNOMED CT id, preferred term), as in fhir-profiles/snomed-ct-subset.json.
C = {
    "stroke": ("230690007", "Cerebrovascular accident"),
    "tia": ("266257000", "Transient ischemic attack"),
    "aphasia": ("87486003", "Aphasia"),
    "cancer": ("363346000", "Malignant neoplastic disease"),
    "breast": ("254837009", "Malignant neoplasm of breast"),
    "breast-primary": ("372137005", "Primary malignant neoplasm of breast"),
    "prostate": ("399068003", "Malignant tumor of prostate"),
    "bph": ("266569009", "Benign prostatic hyperplasia"),
    "pancreas": ("363418001", "Malignant tumor of pancreas"),
    "bladder": ("399326009", "Malignant tumor of urinary bladder"),
    "leukemia": ("93143009", "Leukemia"),
    "lymphoma": ("118600007", "Malignant lymphoma"),
    "myeloma": ("109989006", "Multiple myeloma"),
    "diabetes": ("73211009", "Diabetes mellitus"),
    "diabetes-1": ("46635009", "Diabetes mellitus type 1"),
    "diabetes-2": ("44054006", "Diabetes mellitus type 2"),
    "ms": ("24700007", "Multiple sclerosis"),
    "ms-rr": ("426373005", "Relapsing remitting multiple sclerosis"),
    "ms-sp": ("425500002", "Secondary progressive multiple sclerosis"),
    "mnd": ("37340000", "Motor neuron disease"),
    "als": ("86044005", "Amyotrophic lateral sclerosis"),
    "hearing": ("15188001", "Hearing loss"),
    "sensorineural": ("60700002", "Sensorineural hearing loss"),
    "tinnitus": ("60862001", "Tinnitus"),
    "sickle": ("417357006", "Sickling disorder due to hemoglobin S"),
    "sickle-ss": ("127040003", "Sickle cell-hemoglobin SS disease"),
    "sickle-sc": ("35434009", "Sickle cell-hemoglobin C disease"),
    "alopecia": ("56317004", "Alopecia"),
    "ckd": ("709044004", "Chronic kidney disease"),
    "meningitis": ("7180009", "Meningitis"),
    "migraine": ("37796009", "Migraine"),
    "dementia": ("52448006", "Dementia"),
    "isolation": ("422650009", "Social isolation"),
    "lonely": ("267076002", "Feeling lonely"),
    "lives-alone": ("105529008", "Lives alone"),
}

ALL_MODES = ["phone", "letter", "in-person", "sms", "email", "video"]


def service(sid, name, comment, conditions, *, areas=(), ages=None, modes=ALL_MODES, capacity="open",
            languages=("en-GB",), category=("8", "Counselling"), phone=None):
    return dict(sid=sid, name=name, comment=comment, conditions=conditions, areas=list(areas), ages=ages,
                modes=list(modes), capacity=capacity, languages=list(languages), category=category, phone=phone)


# id -> (name, charity number, type text, [services]).
CHARITIES = {
    "stroke-association": ("Stroke Association", "1190241", [
        service("stroke-association-support", "Stroke Association stroke recovery and support service",
                "Information, advice and emotional support after a stroke or TIA, by phone, letter and online.",
                ["stroke", "tia", "aphasia"], modes=["phone", "letter", "email", "sms", "video"]),
        service("stroke-association-west-yorkshire", "Stroke Association West Yorkshire stroke recovery service",
                "Face-to-face and phone support from a local stroke support coordinator in West Yorkshire.",
                ["stroke"], areas=["west-yorkshire"], modes=["phone", "in-person", "letter"]),
    ]),
    "breast-cancer-now": ("Breast Cancer Now", "1190242", [
        service("breast-cancer-now-support", "Breast Cancer Now breast cancer support service",
                "Specialist nurses on a helpline, peer support and information for anyone affected by breast cancer.",
                ["breast", "breast-primary"]),
        service("breast-cancer-now-younger-women", "Breast Cancer Now younger women's service",
                "Peer support for women diagnosed with breast cancer aged 45 or under.",
                ["breast"], ages=(18, 45), capacity="waitlist", modes=["phone", "email", "video"]),
    ]),
    "prostate-cancer-uk": ("Prostate Cancer UK", "1190243", [
        service("prostate-cancer-uk-support", "Prostate Cancer UK prostate health support service",
                "Specialist nurses by phone and email for men with prostate cancer or prostate problems.",
                ["prostate", "bph"], ages=(18, None), modes=["phone", "email", "letter"]),
    ]),
    "blood-cancer-uk": ("Blood Cancer UK", "1190244", [
        service("blood-cancer-uk-support", "Blood Cancer UK blood cancer support service",
                "Support line, information and an online community for people with blood cancer.",
                ["leukemia", "lymphoma", "myeloma"]),
        service("blood-cancer-uk-london", "Blood Cancer UK London support group",
                "Monthly in-person support group in London (not taking new members at present).",
                ["leukemia", "lymphoma", "myeloma"], areas=["london"], modes=["in-person"], capacity="closed"),
    ]),
    "ms-society": ("MS Society", "1190245", [
        service("ms-society-support", "MS Society multiple sclerosis support service",
                "Helpline, grants and information for people living with MS.",
                ["ms", "ms-rr", "ms-sp"]),
        service("ms-society-leeds-group", "MS Society Leeds local group",
                "Local group in Leeds: peer support, exercise classes and visits.",
                ["ms"], areas=["leeds"], modes=["phone", "in-person", "letter"]),
    ]),
    "mnd-association": ("MND Association", "1190246", [
        service("mnd-association-support", "MND Association motor neurone disease support service",
                "MND Connect helpline, visitors and equipment loans for people living with MND.",
                ["mnd", "als"]),
    ]),
    "diabetes-uk": ("Diabetes UK", "1190247", [
        service("diabetes-uk-support", "Diabetes UK diabetes support service",
                "Helpline with trained advisers and information for people living with diabetes.",
                ["diabetes", "diabetes-1", "diabetes-2"], ages=(18, None)),
        service("diabetes-uk-young-people", "Diabetes UK children and young people's service",
                "Support for children and young people with diabetes and their families.",
                ["diabetes", "diabetes-1"], ages=(0, 25)),
        service("diabetes-uk-west-yorkshire-peer-support", "Diabetes UK West Yorkshire peer support groups",
                "Local peer support groups across West Yorkshire.",
                ["diabetes"], areas=["west-yorkshire"], ages=(18, None), modes=["phone", "in-person"], capacity="waitlist"),
    ]),
    "rnid": ("RNID", "1190248", [
        service("rnid-support", "RNID hearing loss and tinnitus support service",
                "Information and support by phone, text relay, email and video (BSL) for people who are deaf or have hearing loss or tinnitus.",
                ["hearing", "sensorineural", "tinnitus"], languages=("en-GB", "bfi")),
        service("rnid-bradford-hearing-aid-support", "RNID Bradford hearing aid support drop-in",
                "Volunteer-led hearing aid maintenance and support sessions in Bradford.",
                ["hearing"], areas=["bradford"], modes=["in-person", "letter"]),
    ]),
    "sickle-cell-society": ("Sickle Cell Society", "1190249", [
        service("sickle-cell-society-support", "Sickle Cell Society sickle cell support service",
                "Advice, advocacy and peer support for people living with sickle cell disorder.",
                ["sickle", "sickle-ss", "sickle-sc"]),
        service("sickle-cell-society-young-people", "Sickle Cell Society young people's mentoring",
                "Mentoring and activities for young people aged 11 to 25 with sickle cell.",
                ["sickle"], ages=(11, 25), capacity="waitlist"),
    ]),
    "befriending-network-leeds": ("Befriending Network Leeds", "1123456", [
        service("befriending-network-leeds-support", "Befriending Network Leeds befriending service",
                "Volunteer befriending by phone and in person for adults in Leeds who are socially isolated or lonely.",
                ["isolation", "lonely", "lives-alone"], areas=["leeds"], ages=(18, None),
                modes=["phone", "in-person", "letter"]),
    ]),
    "pancreatic-cancer-uk": ("Pancreatic Cancer UK", "1190250", [
        service("pancreatic-cancer-uk-support", "Pancreatic Cancer UK support line",
                "Specialist nurses by phone and email for anyone affected by pancreatic cancer.",
                ["pancreas"], modes=["phone", "email"]),
    ]),
    "macmillan": ("Macmillan Cancer Support", "1190251", [
        service("macmillan-support-line", "Macmillan Support Line",
                "Cancer information, financial guidance and emotional support for anyone living with cancer.",
                ["cancer"]),
        service("macmillan-leeds-information-centre", "Macmillan Leeds cancer information and support centre",
                "Drop-in centre in Leeds: information, benefits advice and support groups.",
                ["cancer"], areas=["leeds"], modes=["in-person", "phone", "letter"]),
        service("macmillan-manchester-information-centre", "Macmillan Manchester cancer information and support centre",
                "Drop-in centre in Manchester: information, benefits advice and support groups.",
                ["cancer"], areas=["greater-manchester"], modes=["in-person", "phone", "letter"]),
    ]),
    "age-uk-leeds": ("Age UK Leeds", "1190252", [
        service("age-uk-leeds-befriending", "Age UK Leeds befriending and dementia support",
                "Home visits and phone befriending for older people in Leeds, including people living with dementia.",
                ["isolation", "lonely", "dementia"], areas=["leeds"], ages=(60, None),
                modes=["phone", "in-person", "letter"]),
    ]),
    "alopecia-uk": ("Alopecia UK", "1190253", [
        service("alopecia-uk-support", "Alopecia UK online support",
                "Online support groups and email advice for people with hair loss.",
                ["alopecia"], modes=["email", "video"]),
    ]),
    "fight-bladder-cancer": ("Fight Bladder Cancer", "1190254", [
        service("fight-bladder-cancer-support", "Fight Bladder Cancer peer support",
                "Peer support by phone and online for people with bladder cancer and their families.",
                ["bladder"]),
    ]),
    "kidney-care-uk": ("Kidney Care UK", "1190255", [
        service("kidney-care-uk-advocacy", "Kidney Care UK patient support and advocacy",
                "Advocacy officers, counselling and grants for people with kidney disease.",
                ["ckd"], languages=("en-GB", "pa", "ur")),
    ]),
    "meningitis-now": ("Meningitis Now", "1190256", [
        service("meningitis-now-support", "Meningitis Now after-effects support",
                "Support for people and families rebuilding their lives after meningitis.",
                ["meningitis"]),
    ]),
    "migraine-trust": ("The Migraine Trust", "1190257", [
        service("migraine-trust-information", "The Migraine Trust information and support",
                "Specialist nurse information service by phone and email for people with migraine.",
                ["migraine"], ages=(16, None), modes=["phone", "email"]),
    ]),
    "young-lives-vs-cancer": ("Young Lives vs Cancer", "1190258", [
        service("young-lives-vs-cancer-social-work", "Young Lives vs Cancer social work service",
                "Social workers supporting children and young people up to 25 with cancer, and their families.",
                ["cancer"], ages=(0, 25)),
    ]),
}

# Ofcom's drama ranges: 0808 157 0000-0999, 0113 496 0000-0999, 020 7946 0000-0999.
PHONES = iter(f"0808 157 0{n:03d}" for n in range(101, 999))


def coding(system, code, display=None):
    c = {"system": system, "code": code}
    if display:
        c["display"] = display
    return c


def organization(oid, name, number):
    return {
        "resourceType": "Organization", "id": oid, "active": True,
        "identifier": [{"system": CHARITY_NUMBER, "value": number}],
        "type": [{"coding": [coding("http://terminology.hl7.org/CodeSystem/organization-type", "cg", "Community Group")]}],
        "name": name,
        "telecom": [{"system": "email", "value": f"info@{oid}.example.org.uk", "use": "work"}],
    }


def location(oid, area):
    name, codes = AREAS[area]
    return {
        "resourceType": "Location", "id": f"{oid}-area-{area}", "status": "active",
        "name": f"{name} (coverage)", "mode": "kind",
        "physicalType": {"coding": [coding("http://terminology.hl7.org/CodeSystem/location-physical-type", "area", "Area")]},
        "extension": [{"url": f"{SP}/coverage-postcode", "valueString": c} for c in codes],
        "managingOrganization": {"reference": f"Organization/{oid}"},
    }


def healthcare_service(oid, org_name, s):
    ext = [{"url": f"{SP}/service-capacity", "valueCode": s["capacity"]}]
    ext += [{"url": f"{SP}/service-contact-mode", "valueCode": m} for m in s["modes"]]
    if s["ages"]:
        low, high = s["ages"]
        rng = {}
        if low is not None:
            rng["low"] = {"value": low, "unit": "a", "system": "http://unitsofmeasure.org", "code": "a"}
        if high is not None:
            rng["high"] = {"value": high, "unit": "a", "system": "http://unitsofmeasure.org", "code": "a"}
        ext.append({"url": f"{SP}/service-age-range", "valueRange": rng})
    hs = {
        "resourceType": "HealthcareService", "id": s["sid"],
        "extension": ext,
        "active": True,
        "providedBy": {"reference": f"Organization/{oid}", "display": org_name},
        "category": [{"coding": [coding("http://terminology.hl7.org/CodeSystem/service-category", *s["category"])]}],
        "specialty": [{"coding": [coding(SNOMED, *C[c])]} for c in s["conditions"]],
    }
    if s["areas"]:
        hs["coverageArea"] = [{"reference": f"Location/{oid}-area-{a}"} for a in s["areas"]]
    telecom = []
    if "phone" in s["modes"]:
        telecom.append({"system": "phone", "value": next(PHONES), "use": "work"})
    if "email" in s["modes"]:
        telecom.append({"system": "email", "value": f"support@{oid}.example.org.uk", "use": "work"})
    hs.update({
        "name": s["name"],
        "comment": s["comment"],
    })
    if telecom:
        hs["telecom"] = telecom
    hs.update({
        "serviceProvisionCode": [{"coding": [coding("http://terminology.hl7.org/CodeSystem/service-provision-conditions", "free", "Free")]}],
        "communication": [{"coding": [coding("urn:ietf:bcp:47", lang)]} for lang in s["languages"]],
        "referralMethod": [{"coding": [coding("http://terminology.hl7.org/CodeSystem/service-referral-method", "elec", "Secure Messaging")]}],
        "appointmentRequired": False,
        "endpoint": [{"reference": f"Endpoint/{oid}-webhook"}],
    })
    return hs


def endpoint(oid, name):
    # The example endpoints are fictional, so they are off: the sandbox does not try to deliver to
    # them. To see webhooks in the sandbox, an operator points an Endpoint at a receiver of their
    # own (PUT /fhir/Endpoint/{id}, then POST /fhir/Endpoint/{id}/$secret).
    return {
        "resourceType": "Endpoint", "id": f"{oid}-webhook", "status": "off",
        "connectionType": coding("http://terminology.hl7.org/CodeSystem/endpoint-connection-type", "hl7-fhir-rest", "HL7 FHIR"),
        "name": f"{name} Signpost referral webhook",
        "managingOrganization": {"reference": f"Organization/{oid}", "display": name},
        "payloadType": [{"coding": [coding("http://terminology.hl7.org/CodeSystem/endpoint-payload-type", "any")]}],
        "payloadMimeType": ["application/fhir+json"],
        "address": f"https://referrals.{oid}.example.org.uk/signpost/webhook",
    }


def main():
    for oid, (name, number, services) in CHARITIES.items():
        resources = [organization(oid, name, number)]
        areas = sorted({a for s in services for a in s["areas"]})
        resources += [location(oid, a) for a in areas]
        resources += [healthcare_service(oid, name, s) for s in services]
        resources.append(endpoint(oid, name))
        bundle = {
            "resourceType": "Bundle", "type": "collection",
            "entry": [{"fullUrl": f"https://signpost.example/fhir/{r['resourceType']}/{r['id']}", "resource": r} for r in resources],
        }
        with open(os.path.join(HERE, f"{oid}.json"), "w") as f:
            json.dump(bundle, f, indent=2, ensure_ascii=False)
            f.write("\n")
    n_services = sum(len(s) for _, _, s in CHARITIES.values())
    conditions = {c for _, _, ss in CHARITIES.values() for s in ss for c in s["conditions"]}
    print(f"{len(CHARITIES)} charities, {n_services} services, {len(conditions)} conditions")


if __name__ == "__main__":
    main()
