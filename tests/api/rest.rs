//! FHIR REST: create, read, vread, update, history, headers, Prefer and search.

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn create_read_update_vread_and_history_keep_versions() {
    let app = spawn().await;
    let created = app.post(REFERRER, "/fhir/Patient", &patient()).await;
    assert_eq!(created.status, 201);
    let id = created.id();
    assert_eq!(created.body["meta"]["versionId"], "1");
    assert_eq!(created.header("etag"), Some("W/\"1\""));
    assert!(created.header("last-modified").is_some_and(|v| v.ends_with("GMT")));
    let location = created.header("location").unwrap().to_string();
    assert!(location.ends_with(&format!("/fhir/Patient/{id}/_history/1")), "{location}");

    let read = app.get(REFERRER, &format!("/fhir/Patient/{id}")).await;
    assert_eq!(read.status, 200);
    assert_eq!(read.body["name"][0]["family"], "DOE");

    let mut changed = read.body.clone();
    changed["birthDate"] = json!("1948-07-03");
    let updated = app.put(REFERRER, &format!("/fhir/Patient/{id}"), &changed, Some("W/\"1\"")).await;
    assert_eq!(updated.status, 200, "{}", updated.body);
    assert_eq!(updated.body["meta"]["versionId"], "2");
    assert_eq!(updated.header("etag"), Some("W/\"2\""));

    let stale = app.put(REFERRER, &format!("/fhir/Patient/{id}"), &changed, Some("W/\"1\"")).await;
    stale.assert_outcome(412, "version-conflict");

    let v1 = app.get(REFERRER, &format!("/fhir/Patient/{id}/_history/1")).await;
    assert_eq!(v1.body["birthDate"], "1948-07-02");
    let v2 = app.get(REFERRER, &format!("/fhir/Patient/{id}/_history/2")).await;
    assert_eq!(v2.body["birthDate"], "1948-07-03");
    assert_eq!(app.get(REFERRER, &format!("/fhir/Patient/{id}/_history/3")).await.status, 404);

    let history = app.get(REFERRER, &format!("/fhir/Patient/{id}/_history")).await;
    assert_eq!(history.body["type"], "history");
    assert_eq!(history.total(), 2);
    let versions: Vec<_> = history.resources().iter().map(|r| r["meta"]["versionId"].clone()).collect();
    assert_eq!(versions, vec![json!("2"), json!("1")]);
}

#[tokio::test]
async fn server_keeps_meta_and_ignores_client_ids_on_create() {
    let app = spawn().await;
    let mut p = patient();
    p["id"] = json!("chosen-by-client");
    p["meta"] = json!({ "versionId": "99", "lastUpdated": "2001-01-01T00:00:00Z", "source": "https://gp.example" });
    let r = app.post(REFERRER, "/fhir/Patient", &p).await;
    assert_eq!(r.status, 201);
    assert_ne!(r.id(), "chosen-by-client");
    assert_eq!(r.body["meta"]["versionId"], "1");
    assert_ne!(r.body["meta"]["lastUpdated"], "2001-01-01T00:00:00Z");
    assert_eq!(r.body["meta"]["source"], "https://gp.example");

    let mut wrong_id = r.body.clone();
    wrong_id["id"] = json!("other");
    app.put(REFERRER, &format!("/fhir/Patient/{}", r.id()), &wrong_id, None).await.assert_outcome(400, "id-mismatch");
}

#[tokio::test]
async fn prefer_return_minimal_representation_and_outcome() {
    let app = spawn().await;
    let minimal =
        app.send("POST", Some(REFERRER), "/fhir/Patient", Some(&patient()), &[("Prefer", "return=minimal")]).await;
    assert_eq!(minimal.status, 201);
    assert_eq!(minimal.body, serde_json::Value::Null);
    assert!(minimal.header("location").is_some());

    let oo = app
        .send("POST", Some(REFERRER), "/fhir/Patient", Some(&patient()), &[("Prefer", "return=OperationOutcome")])
        .await;
    assert_eq!(oo.status, 201);
    assert_eq!(oo.body["resourceType"], "OperationOutcome");
    assert_eq!(oo.body["issue"][0]["severity"], "information");

    let full = app
        .send("POST", Some(REFERRER), "/fhir/Patient", Some(&patient()), &[("Prefer", "return=representation")])
        .await;
    assert_eq!(full.body["resourceType"], "Patient");
}

#[tokio::test]
async fn search_pages_with_total_and_working_next_links() {
    let app = spawn().await;
    for _ in 0..5 {
        app.patient(REFERRER).await;
    }
    let first = app.get(REFERRER, "/fhir/Patient?_count=2&_sort=_lastUpdated").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.body["type"], "searchset");
    assert_eq!(first.total(), 5);
    let mut seen: Vec<String> = first.resources().iter().map(|r| r["id"].as_str().unwrap().to_string()).collect();
    let mut next = first.body["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next").cloned();
    while let Some(link) = next {
        let url = link["url"].as_str().unwrap();
        let path = &url[url.find("/fhir").unwrap()..];
        let page = app.get(REFERRER, path).await;
        assert_eq!(page.total(), 5);
        seen.extend(page.resources().iter().map(|r| r["id"].as_str().unwrap().to_string()));
        next = page.body["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next").cloned();
    }
    assert_eq!(seen.len(), 5);
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 5, "pages overlap");

    let newest_first = app.get(REFERRER, "/fhir/Patient?_sort=-_lastUpdated&_count=5").await;
    let times: Vec<String> =
        newest_first.resources().iter().map(|r| r["meta"]["lastUpdated"].as_str().unwrap().to_string()).collect();
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(times, sorted);

    let summary = app.get(REFERRER, "/fhir/Patient?_summary=count").await;
    assert_eq!(summary.total(), 5);
    assert!(summary.resources().is_empty());
}

#[tokio::test]
async fn search_by_id_last_updated_identifier_status_and_references() {
    let app = spawn().await;
    let (sr, pid) = app.referral(REFERRER, "HealthcareService/stroke-association-support").await;
    let (other_sr, _) = app.referral(REFERRER, "Organization/befriending-network-leeds").await;
    let sr_body = app.get(REFERRER, &format!("/fhir/ServiceRequest/{sr}")).await.body;
    let ident = sr_body["identifier"][0]["value"].as_str().unwrap().to_string();
    let updated = sr_body["meta"]["lastUpdated"].as_str().unwrap().to_string();

    let ids = |r: &Resp| r.resources().iter().map(|x| x["id"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    let q = |s: &str| s.replace('+', "%2B").replace('|', "%7C");

    assert_eq!(ids(&app.get(REFERRER, &format!("/fhir/ServiceRequest?_id={sr}")).await), vec![sr.clone()]);
    assert_eq!(
        ids(&app
            .get(
                REFERRER,
                &q(&format!("/fhir/ServiceRequest?identifier=https://referrals.example.org.uk/Id/referral|{ident}"))
            )
            .await),
        vec![sr.clone()]
    );
    assert_eq!(ids(&app.get(REFERRER, &format!("/fhir/ServiceRequest?identifier={ident}")).await), vec![sr.clone()]);
    assert_eq!(ids(&app.get(REFERRER, &format!("/fhir/ServiceRequest?subject=Patient/{pid}")).await), vec![sr.clone()]);
    assert_eq!(ids(&app.get(REFERRER, &format!("/fhir/ServiceRequest?patient={pid}")).await), vec![sr.clone()]);
    assert_eq!(
        ids(&app.get(REFERRER, "/fhir/ServiceRequest?performer=Organization/befriending-network-leeds").await),
        vec![other_sr.clone()]
    );
    assert_eq!(app.get(REFERRER, "/fhir/ServiceRequest?status=active").await.total(), 2);
    assert_eq!(app.get(REFERRER, "/fhir/ServiceRequest?status=completed").await.total(), 0);
    assert_eq!(app.get(REFERRER, "/fhir/ServiceRequest?requester=PractitionerRole/gp-apatel").await.total(), 2);
    assert_eq!(app.get(REFERRER, &q(&format!("/fhir/ServiceRequest?_lastUpdated=ge{updated}"))).await.total(), 2);
    assert_eq!(app.get(REFERRER, &q(&format!("/fhir/ServiceRequest?_lastUpdated=lt{updated}"))).await.total(), 0);
    assert_eq!(app.get(REFERRER, "/fhir/ServiceRequest?_lastUpdated=gt2100-01-01").await.total(), 0);
    assert_eq!(app.get(REFERRER, "/fhir/ServiceRequest?_lastUpdated=gt2020-01-01").await.total(), 2);

    let tasks = app.get(REFERRER, &format!("/fhir/Task?focus=ServiceRequest/{sr}")).await;
    assert_eq!(tasks.total(), 1);
    let task = &tasks.resources()[0];
    assert_eq!(app.get(REFERRER, "/fhir/Task?owner=Organization/stroke-association").await.total(), 1);
    assert_eq!(app.get(REFERRER, &format!("/fhir/Task?based-on=ServiceRequest/{sr}")).await.total(), 1);
    assert_eq!(app.get(REFERRER, &format!("/fhir/Task?patient=Patient/{pid}")).await.total(), 1);
    // `patient` names Patients only: a reference of another type matches nothing (200, empty).
    assert_eq!(app.get(REFERRER, &format!("/fhir/Task?patient=Group/{pid}")).await.total(), 0);
    assert_eq!(app.get(REFERRER, "/fhir/Task?status=requested").await.total(), 2);
    assert_eq!(app.get(REFERRER, "/fhir/Task?requester=PractitionerRole/gp-apatel").await.total(), 2);
    assert_eq!(task["owner"]["reference"], "Organization/stroke-association");

    let bad = app.get(REFERRER, "/fhir/Task?_lastUpdated=yesterday").await;
    bad.assert_outcome(400, "bad-search-value");
}

#[tokio::test]
async fn unknown_search_parameters_are_reported_leniently_and_refused_strictly() {
    let app = spawn().await;
    app.patient(REFERRER).await;
    let lenient = app.get(REFERRER, "/fhir/Patient?colour=blue").await;
    assert_eq!(lenient.status, 200);
    assert_eq!(lenient.total(), 1);
    let outcome = lenient.body["entry"].as_array().unwrap().iter().find(|e| e["search"]["mode"] == "outcome").unwrap();
    assert_eq!(outcome["resource"]["issue"][0]["details"]["coding"][0]["code"], "unknown-search-parameter");
    let self_link = lenient.body["link"][0]["url"].as_str().unwrap();
    assert!(!self_link.contains("colour"), "{self_link}");

    let strict =
        app.send("GET", Some(REFERRER), "/fhir/Patient?colour=blue", None, &[("Prefer", "handling=strict")]).await;
    strict.assert_outcome(400, "unknown-search-parameter");
}
