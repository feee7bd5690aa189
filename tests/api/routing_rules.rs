//! Routing by condition (PRODUCT.md §4): a referral that names only the patient's conditions
//! reaches the right charities in their area, in a way they can use, with its reasons stored.

use serde_json::{Value, json};

use crate::helpers::*;

const SNOMED: &str = "http://snomed.info/sct";

fn concept(code: &str) -> Value {
    json!({ "coding": [{ "system": SNOMED, "code": code }] })
}

/// A referral for `pid` with these SNOMED CT reasons and no performer.
fn by_condition(pid: &str, codes: &[&str]) -> Value {
    let mut sr = service_request(pid, "unused");
    sr.as_object_mut().unwrap().remove("performer");
    sr["reasonCode"] = codes.iter().map(|c| concept(c)).collect();
    sr
}

/// A Patient with a postcode, birth date and optional contact preference.
fn patient_at(postcode: &str, birth: &str, contact: Option<&str>) -> Value {
    let mut p = patient();
    p["address"] = json!([{ "use": "home", "postalCode": postcode }]);
    p["birthDate"] = json!(birth);
    p["telecom"] =
        json!([{ "system": "phone", "value": "0113 496 0000" }, { "system": "email", "value": "jane@example.org" }]);
    if let Some(c) = contact {
        p["extension"] =
            json!([{ "url": "https://signpost.example/fhir/StructureDefinition/contact-preference", "valueCode": c }]);
    }
    p
}

async fn owners(app: &TestApp, sr: &str) -> Vec<String> {
    let mut v: Vec<String> = app
        .tasks_of(OPERATOR, sr)
        .await
        .iter()
        .map(|t| t["owner"]["reference"].as_str().unwrap().trim_start_matches("Organization/").to_string())
        .collect();
    v.sort();
    v
}

/// The candidates of each need in an explanation: (service id, status).
fn candidates(explanation: &Value) -> Vec<Vec<(String, String)>> {
    let params = explanation["parameter"].as_array().unwrap();
    params
        .iter()
        .filter(|p| p["name"] == "need")
        .map(|need| {
            need["part"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["name"] == "candidate")
                .map(|c| {
                    let parts = c["part"].as_array().unwrap();
                    let get = |n: &str| parts.iter().find(|p| p["name"] == n).unwrap().clone();
                    (
                        get("service")["valueReference"]["reference"]
                            .as_str()
                            .unwrap()
                            .trim_start_matches("HealthcareService/")
                            .to_string(),
                        get("status")["valueCode"].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        })
        .collect()
}

fn status_of<'a>(c: &'a [(String, String)], service: &str) -> &'a str {
    c.iter()
        .find(|(s, _)| s == service)
        .map(|(_, st)| st.as_str())
        .unwrap_or_else(|| panic!("{service} not considered: {c:?}"))
}

#[tokio::test]
async fn stroke_and_diabetes_reach_both_charities_locally_with_reasons() {
    let app = spawn().await;
    let pid = app.patient_with(REFERRER, &patient_at("LS6 2AB", "1948-07-02", None)).await;
    // Cerebral infarction (a kind of stroke) and type 2 diabetes.
    let r = app.post(REFERRER, "/fhir/ServiceRequest", &by_condition(&pid, &["432504007", "44054006"])).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let sr = r.id();
    assert_eq!(owners(&app, &sr).await, vec!["diabetes-uk", "stroke-association"]);
    let tasks = app.tasks_of(OPERATOR, &sr).await;
    assert_eq!(tasks[0]["groupIdentifier"], tasks[1]["groupIdentifier"], "one referral, one group");
    for t in &tasks {
        let note = t["note"][0]["text"].as_str().unwrap();
        assert!(note.starts_with("Routed by Signpost"), "{note}");
        assert!(note.contains("local service"), "local services win: {note}");
    }
    let diabetes = tasks.iter().find(|t| t["owner"]["reference"] == "Organization/diabetes-uk").unwrap();
    assert_eq!(diabetes["businessStatus"]["coding"][0]["code"], "waitlisted", "the local group has a waiting list");

    let e = app.get(REFERRER, &format!("/fhir/ServiceRequest/{sr}/$routing")).await;
    assert_eq!(e.status, 200, "{}", e.body);
    assert_eq!(e.body["resourceType"], "Parameters");
    let c = candidates(&e.body);
    assert_eq!(status_of(&c[0], "stroke-association-west-yorkshire"), "chosen");
    assert_eq!(status_of(&c[0], "stroke-association-support"), "fits");
    assert_eq!(status_of(&c[1], "diabetes-uk-west-yorkshire-peer-support"), "chosen");
    assert_eq!(status_of(&c[1], "diabetes-uk-young-people"), "eligibility");
    // The same explanation for operators; charities read the Task's note instead.
    assert_eq!(app.get(OPERATOR, &format!("/fhir/ServiceRequest/{sr}/$routing")).await.body, e.body);
    app.get(STROKE, &format!("/fhir/ServiceRequest/{sr}/$routing")).await.assert_outcome(403, "forbidden");
    app.get(REFERRER_2, &format!("/fhir/ServiceRequest/{sr}/$routing")).await.assert_outcome(404, "not-found");
    // The charities see their Tasks.
    assert_eq!(app.tasks_of(STROKE, &sr).await.len(), 1);
}

#[tokio::test]
async fn a_condition_in_the_bundle_routes_through_reason_reference() {
    let app = spawn().await;
    let mut bundle = referral_bundle();
    let patient_url = bundle["entry"][0]["fullUrl"].as_str().unwrap().to_string();
    let entries = bundle["entry"].as_array_mut().unwrap();
    // Drop the sender's own Task and the performer: Signpost routes by the Condition.
    entries.remove(4);
    entries.push(json!({
        "fullUrl": "urn:uuid:3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e60",
        "resource": { "resourceType": "Condition", "code": concept("86044005"), "subject": { "reference": patient_url } },
        "request": { "method": "POST", "url": "Condition" }
    }));
    let sr = &mut entries[3]["resource"];
    sr.as_object_mut().unwrap().remove("performer");
    sr.as_object_mut().unwrap().remove("reasonCode");
    sr["reasonReference"] = json!([{ "reference": "urn:uuid:3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e60" }]);
    let r = app.post(REFERRER, "/fhir", &bundle).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let sr_id = r.body["entry"][3]["response"]["location"].as_str().unwrap().split('/').nth(1).unwrap().to_string();
    assert_eq!(owners(&app, &sr_id).await, vec!["mnd-association"], "ALS is-a motor neuron disease");
}

#[tokio::test]
async fn a_need_no_service_fits_is_kept_warned_and_listed_for_operators() {
    let app = spawn().await;
    let pid = app.patient(REFERRER).await;
    // Heart failure: no charity in the directory serves it.
    let r = app
        .send(
            "POST",
            Some(REFERRER),
            "/fhir/ServiceRequest",
            Some(&by_condition(&pid, &["84114007"])),
            &[("Prefer", "return=OperationOutcome")],
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(r.issue_codes().contains(&"need-unmatched".to_string()), "{}", r.body);
    assert_eq!(r.expressions(), vec!["ServiceRequest.reasonCode[0]".to_string()]);
    let sr = r.header("location").unwrap().split('/').nth_back(2).unwrap().to_string();
    assert!(app.tasks_of(OPERATOR, &sr).await.is_empty());
    let list = app.get(OPERATOR, "/fhir/ServiceRequest/$unmatched").await;
    assert_eq!(list.status, 200, "{}", list.body);
    assert!(list.body.to_string().contains(&format!("ServiceRequest/{sr}")), "{}", list.body);
    app.get(REFERRER, "/fhir/ServiceRequest/$unmatched").await.assert_outcome(403, "forbidden");
    // An ICD-10 code is not matched, with a warning that says why.
    let mut icd = by_condition(&pid, &[]);
    icd["reasonCode"] = json!([{ "coding": [{ "system": "http://hl7.org/fhir/sid/icd-10", "code": "I50" }] }]);
    let r = app
        .send("POST", Some(REFERRER), "/fhir/ServiceRequest", Some(&icd), &[("Prefer", "return=OperationOutcome")])
        .await;
    assert_eq!(r.status, 201);
    assert!(r.body.to_string().contains("only SNOMED CT"), "{}", r.body);
}

#[tokio::test]
async fn filters_follow_the_patient_age_area_and_contact_preference() {
    let app = spawn().await;
    // A child with type 1 diabetes: the children's service, not the adult one.
    let child = app.patient_with(REFERRER, &patient_at("LS6 2AB", "2015-05-01", None)).await;
    let sr = app.post(REFERRER, "/fhir/ServiceRequest", &by_condition(&child, &["46635009"])).await.id();
    let e = app.get(REFERRER, &format!("/fhir/ServiceRequest/{sr}/$routing")).await.body;
    assert_eq!(status_of(&candidates(&e)[0], "diabetes-uk-young-people"), "chosen");
    assert_eq!(status_of(&candidates(&e)[0], "diabetes-uk-support"), "eligibility");

    // Cancer in Manchester: the local Macmillan centre; in London the national line.
    let manchester = app.patient_with(REFERRER, &patient_at("M1 1AE", "1960-01-01", None)).await;
    let sr = app.post(REFERRER, "/fhir/ServiceRequest", &by_condition(&manchester, &["363418001"])).await.id();
    let e = app.get(REFERRER, &format!("/fhir/ServiceRequest/{sr}/$routing")).await.body;
    // Pancreatic cancer: the specialist and Macmillan both fit; the local centre ranks first.
    assert_eq!(status_of(&candidates(&e)[0], "macmillan-manchester-information-centre"), "chosen");
    assert_eq!(status_of(&candidates(&e)[0], "macmillan-leeds-information-centre"), "coverage");
    assert_eq!(status_of(&candidates(&e)[0], "young-lives-vs-cancer-social-work"), "eligibility");

    // Leukaemia in London: the London group is closed.
    let london = app.patient_with(REFERRER, &patient_at("SW1A 1AA", "1970-01-01", None)).await;
    let sr = app.post(REFERRER, "/fhir/ServiceRequest", &by_condition(&london, &["91861009"])).await.id();
    let e = app.get(REFERRER, &format!("/fhir/ServiceRequest/{sr}/$routing")).await.body;
    assert_eq!(status_of(&candidates(&e)[0], "blood-cancer-uk-london"), "capacity");
    assert_eq!(owners(&app, &sr).await, vec!["blood-cancer-uk"]);

    // Hair loss for someone who wants letters only: the only service is online.
    let letters = app.patient_with(REFERRER, &patient_at("LS6 2AB", "1980-01-01", Some("letter"))).await;
    let r = app
        .send(
            "POST",
            Some(REFERRER),
            "/fhir/ServiceRequest",
            Some(&by_condition(&letters, &["68225006"])),
            &[("Prefer", "return=OperationOutcome")],
        )
        .await;
    assert_eq!(r.status, 201);
    assert!(r.body.to_string().contains("contact-fit"), "{}", r.body);
}

#[tokio::test]
async fn an_explicit_performer_still_wins_over_the_rules() {
    let app = spawn().await;
    let pid = app.patient(REFERRER).await;
    let mut sr = by_condition(&pid, &["432504007"]);
    sr["performer"] = json!([{ "reference": "HealthcareService/befriending-network-leeds-support" }]);
    let id = app.post(REFERRER, "/fhir/ServiceRequest", &sr).await.id();
    assert_eq!(owners(&app, &id).await, vec!["befriending-network-leeds"]);
    let e = app.get(REFERRER, &format!("/fhir/ServiceRequest/{id}/$routing")).await.body;
    assert_eq!(e["parameter"][0]["valueCode"], "explicit-performer");
}

#[tokio::test]
async fn a_dry_run_explains_without_storing_and_twice_gives_the_same() {
    let app = spawn().await;
    let pid = app.patient(REFERRER).await;
    let sr = by_condition(&pid, &["432504007", "44054006", "84114007"]);
    let first = app.post(REFERRER, "/fhir/ServiceRequest/$route", &sr).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let second = app.post(REFERRER, "/fhir/ServiceRequest/$route", &sr).await;
    assert_eq!(first.body, second.body);
    assert_eq!(candidates(&first.body).len(), 3);
    assert_eq!(app.get(OPERATOR, "/fhir/ServiceRequest?_summary=count").await.total(), 0, "nothing stored");
    assert_eq!(app.get(OPERATOR, "/fhir/Task?_summary=count").await.total(), 0);
    // The stored decision of the real submission says the same about each need.
    let id = app.post(REFERRER, "/fhir/ServiceRequest", &sr).await.id();
    let stored = app.get(REFERRER, &format!("/fhir/ServiceRequest/{id}/$routing")).await.body;
    assert_eq!(candidates(&stored), candidates(&first.body));
    // A transaction Bundle can be dry-run too.
    let bundle = app.post(REFERRER, "/fhir/ServiceRequest/$route", &referral_bundle()).await;
    assert_eq!(bundle.status, 200, "{}", bundle.body);
    assert_eq!(bundle.body["parameter"][0]["valueCode"], "explicit-performer", "{}", bundle.body);
    app.post(REFERRER, "/fhir/Patient/$route", &sr).await.assert_outcome(404, "unknown-path");
}

#[tokio::test]
async fn parity_every_condition_of_the_directory_gets_a_task_or_a_recorded_reason() {
    let app = spawn().await;
    let pid = app.patient(REFERRER).await;
    let services = app.get(OPERATOR, "/fhir/HealthcareService?_count=100").await.resources();
    let mut codes: Vec<String> = services
        .iter()
        .flat_map(|s| s["specialty"].as_array().cloned().unwrap_or_default())
        .filter_map(|c| c["coding"][0]["code"].as_str().map(str::to_string))
        .collect();
    codes.sort();
    codes.dedup();
    assert!(codes.len() >= 15, "{codes:?}");
    for code in &codes {
        let r = app
            .send(
                "POST",
                Some(REFERRER),
                "/fhir/ServiceRequest",
                Some(&by_condition(&pid, &[code])),
                &[("Prefer", "return=OperationOutcome")],
            )
            .await;
        assert_eq!(r.status, 201, "{code}: {}", r.body);
        let sr = r.header("location").unwrap().split('/').nth_back(2).unwrap().to_string();
        let tasks = app.tasks_of(OPERATOR, &sr).await.len();
        let warned = r.issue_codes().contains(&"need-unmatched".to_string());
        assert!(tasks == 1 || warned, "{code}: neither a Task nor a reason: {}", r.body);
        assert!(!(tasks > 0 && warned), "{code}: both a Task and a warning");
        let e = app.get(OPERATOR, &format!("/fhir/ServiceRequest/{sr}/$routing")).await;
        assert_eq!(e.status, 200, "{code}: the decision is stored");
    }
}

#[tokio::test]
async fn a_directory_change_reaches_routing_on_every_instance() {
    let first = spawn().await;
    let second = first.another_instance().await;
    let pid = first.patient_with(REFERRER, &patient_at("LS6 2AB", "1948-07-02", None)).await;
    // Both instances have read the directory.
    assert_eq!(status_of(&stroke_candidates(&first, &pid).await, "stroke-association-west-yorkshire"), "chosen");
    assert_eq!(status_of(&stroke_candidates(&second, &pid).await, "stroke-association-west-yorkshire"), "chosen");
    // An operator closes the local service through the second instance.
    let path = "/fhir/HealthcareService/stroke-association-west-yorkshire";
    let mut service = second.get(OPERATOR, path).await.body;
    for e in service["extension"].as_array_mut().unwrap() {
        if e["url"] == "https://signpost.example/fhir/StructureDefinition/service-capacity" {
            e["valueCode"] = json!("closed");
        }
    }
    assert_eq!(second.put(OPERATOR, path, &service, None).await.status, 200);
    // The first instance routes by the new directory at once.
    let c = stroke_candidates(&first, &pid).await;
    assert_eq!(status_of(&c, "stroke-association-west-yorkshire"), "capacity");
    assert_eq!(status_of(&c, "stroke-association-support"), "chosen");
}

/// Route a stroke referral for `pid` and return the explanation's candidates.
async fn stroke_candidates(app: &TestApp, pid: &str) -> Vec<(String, String)> {
    let id = app.post(REFERRER, "/fhir/ServiceRequest", &by_condition(pid, &["230690007"])).await.id();
    candidates(&app.get(REFERRER, &format!("/fhir/ServiceRequest/{id}/$routing")).await.body).remove(0)
}

#[tokio::test]
async fn routing_by_condition_needs_consent_like_any_referral() {
    let app = spawn().await;
    let r = app.post(REFERRER, "/fhir/Patient", &patient_at("LS6 2AB", "1948-07-02", None)).await;
    let pid = r.id();
    let refused = app.post(REFERRER, "/fhir/ServiceRequest", &by_condition(&pid, &["230690007"])).await;
    refused.assert_outcome(422, "consent-missing");
    assert_eq!(app.get(OPERATOR, "/fhir/ServiceRequest?_summary=count").await.total(), 0);
    assert_eq!(app.get(OPERATOR, "/fhir/Task?_summary=count").await.total(), 0);
    assert_eq!(app.get(OPERATOR, "/fhir/ServiceRequest/$unmatched").await.total(), 0);
}
