//! Charity polling reads `task_queue` (the owner's Tasks by status and time) instead of every
//! Task the charity may see: the same answers as the general search plan, for every status,
//! sort, page and `_lastUpdated` bound, kept right by every Task write.

use serde_json::json;
use signpost::store::resources::{Cmp, SearchQuery, find, search, search_general};

use crate::helpers::*;

fn ids(found: &(i64, Vec<signpost::store::resources::StoredResource>)) -> (i64, Vec<String>) {
    (found.0, found.1.iter().map(|r| r.id.clone()).collect())
}

#[tokio::test]
async fn the_polling_plan_answers_as_the_general_plan_does() {
    let app = spawn().await;
    let mut tasks = Vec::new();
    for _ in 0..14 {
        let (sr, _) = app.referral(REFERRER, "HealthcareService/stroke-association-support").await;
        tasks.push(app.tasks_of(STROKE, &sr).await[0]["id"].as_str().unwrap().to_string());
    }
    // Move some on: accepted, rejected, completed; one read (a Signpost `viewed` write).
    let patch = |status: &str| match status {
        "rejected" => json!([{ "op": "replace", "path": "/status", "value": "rejected" },
            { "op": "add", "path": "/statusReason", "value": { "coding": [{ "system": "https://signpost.example/fhir/CodeSystem/rejection-reason", "code": "service-full" }] } }]),
        s => json!([{ "op": "replace", "path": "/status", "value": s }]),
    };
    for (i, t) in tasks.iter().enumerate() {
        let path = format!("/fhir/Task/{t}");
        match i % 4 {
            1 => assert_eq!(app.patch(STROKE, &path, &patch("accepted"), None).await.status, 200),
            2 => assert_eq!(app.patch(STROKE, &path, &patch("rejected"), None).await.status, 200),
            3 => {
                assert_eq!(app.patch(STROKE, &path, &patch("accepted"), None).await.status, 200);
                let done = json!([{ "op": "replace", "path": "/status", "value": "completed" },
                    { "op": "add", "path": "/output", "value": [{ "type": { "text": "outcome" }, "valueCodeableConcept": { "coding": [{ "system": "https://signpost.example/fhir/CodeSystem/support-outcome", "code": "advice-given" }] } }] }]);
                assert_eq!(app.patch(STROKE, &path, &done, None).await.status, 200);
            }
            _ => {}
        }
    }
    let mut conn = app.pool.get().unwrap();
    // Every owner's row carries the owner's grant on its Task (the polling plan counts the rows
    // without probing grants).
    {
        use diesel::dsl::{exists, not};
        use diesel::prelude::*;
        use signpost::store::schema::{access_grants, task_queue};
        let granted = access_grants::table
            .filter(access_grants::resource_type.eq("Task"))
            .filter(access_grants::org_id.eq(task_queue::owner_org))
            .filter(access_grants::resource_id.eq(task_queue::task_id));
        let rows: i64 = task_queue::table.count().get_result(&mut *conn).unwrap();
        let ungranted: i64 = task_queue::table.filter(not(exists(granted))).count().get_result(&mut *conn).unwrap();
        assert_eq!((rows, ungranted), (tasks.len() as i64, 0));
    }
    let now = signpost::fhir::now_ms();
    let owner = ("owner".to_string(), vec!["Organization/stroke-association".to_string()]);
    let mut queries = Vec::new();
    for statuses in [None, Some(vec!["requested"]), Some(vec!["accepted", "rejected"]), Some(vec!["cancelled"])] {
        for sort in [None, Some(true), Some(false)] {
            for (count, offset) in [(5, 0), (5, 5), (100, 0)] {
                for visible in [Some("stroke-association"), None] {
                    for bound in [vec![], vec![(Cmp::Lt, now + 60_000)], vec![(Cmp::Gt, now + 60_000)]] {
                        let mut params = vec![owner.clone()];
                        if let Some(s) = &statuses {
                            params.push(("status".into(), s.iter().map(|x| x.to_string()).collect()));
                        }
                        queries.push(SearchQuery {
                            resource_type: "Task".into(),
                            params,
                            visible_to: visible.map(str::to_string),
                            sort_desc: sort,
                            count,
                            offset,
                            last_updated: bound,
                            ..Default::default()
                        });
                    }
                }
            }
        }
    }
    for q in &queries {
        let fast = ids(&search(&mut conn, q).unwrap());
        let general = ids(&search_general(&mut conn, q).unwrap());
        assert_eq!(fast, general, "{q:?}");
    }
    // Another charity asking for the Stroke Association's Tasks sees none of them.
    let mut foreign = queries[0].clone();
    foreign.visible_to = Some("befriending-network-leeds".into());
    assert_eq!(ids(&search(&mut conn, &foreign).unwrap()), (0, vec![]));
    // Through HTTP: the poll lists exactly the requested ones, newest first.
    let r =
        app.get(STROKE, "/fhir/Task?owner=Organization/stroke-association&status=requested&_sort=-_lastUpdated").await;
    let polled: Vec<String> = r.resources().iter().map(|t| t["id"].as_str().unwrap().to_string()).collect();
    let open: Vec<&String> = tasks.iter().enumerate().filter(|(i, _)| i % 4 == 0).map(|(_, t)| t).collect();
    assert_eq!(r.total(), open.len() as i64);
    assert!(open.iter().all(|t| polled.contains(t)));
}

/// The lookups Signpost makes on every referral (a patient's Consents, a referral's Tasks) take a
/// shorter path than a search: the same resources as the general plan, for the Organization that
/// may see them, one that may not, and no restriction.
#[tokio::test]
async fn one_value_lookups_answer_as_the_general_plan_does() {
    let app = spawn().await;
    let mut lookups = Vec::new();
    for (key, performer) in [
        (REFERRER, "HealthcareService/stroke-association-support"),
        (REFERRER, "HealthcareService/stroke-association-support"),
        (REFERRER_2, "HealthcareService/befriending-network-leeds-support"),
    ] {
        let (sr, pid) = app.referral(key, performer).await;
        lookups.push(("Consent", "patient", format!("Patient/{pid}")));
        lookups.push(("Task", "focus", format!("ServiceRequest/{sr}")));
        lookups.push(("ServiceRequest", "subject", format!("Patient/{pid}")));
    }
    lookups.push(("Consent", "patient", "Patient/nobody".to_string()));
    let mut conn = app.pool.get().unwrap();
    let mut seen = 0;
    for (ty, param, value) in &lookups {
        for visible in [Some("riverside-medical-practice"), Some("stroke-association"), Some("nobody-org"), None] {
            for count in [1, 50] {
                let q = SearchQuery {
                    resource_type: ty.to_string(),
                    params: vec![(param.to_string(), vec![value.clone()])],
                    visible_to: visible.map(str::to_string),
                    count,
                    ..Default::default()
                };
                let found: Vec<String> = find(&mut conn, &q).unwrap().into_iter().map(|r| r.id).collect();
                let general = ids(&search_general(&mut conn, &q).unwrap()).1;
                assert_eq!(found, general, "{q:?}");
                seen += found.len();
            }
        }
    }
    assert!(seen > 0, "the lookups found nothing at all");
}

/// A poll that finds nothing new answers 304 Not Modified, without a body, to the ETag of its
/// last answer; the tag is the caller's own (another organisation holding it gets its own
/// answer), and any write after it (a new referral) makes a new answer with a new tag.
#[tokio::test]
async fn an_unchanged_poll_answers_304_to_the_etag_of_its_last_answer() {
    let app = spawn().await;
    app.referral(REFERRER, "HealthcareService/stroke-association-support").await;
    // The feed from just before that referral's changes.
    let cursor = signpost::store::changes::last(&mut app.pool.get().unwrap()).unwrap() - 10;
    let feed = format!("/fhir/$changes?cursor={cursor}&_count=100");
    let polls = ["/fhir/Task?owner=Organization/stroke-association&status=requested&_count=50", feed.as_str()];
    let mut held = Vec::new();
    for path in polls {
        let first = app.get(STROKE, path).await;
        assert_eq!(first.status, 200, "{}", first.body);
        let tag = first.header("etag").expect("an ETag").to_string();
        let again = app.send("GET", Some(STROKE), path, None, &[("If-None-Match", &tag)]).await;
        assert_eq!((again.status, &again.body), (304, &serde_json::Value::Null), "{path}");
        assert_eq!(again.header("etag"), Some(tag.as_str()));
        let listed = format!("W/\"0-0\", {tag}");
        assert_eq!(app.send("GET", Some(STROKE), path, None, &[("If-None-Match", &listed)]).await.status, 304);
        let other = app.send("GET", Some(BEFRIENDING), path, None, &[("If-None-Match", &tag)]).await;
        assert_eq!(other.status, 200, "another organisation's answer is not the stroke charity's");
        let wider = format!("{path}&_format=json");
        assert_eq!(app.send("GET", Some(STROKE), &wider, None, &[("If-None-Match", &tag)]).await.status, 200);
        held.push((path, tag, first.body));
    }
    app.referral(REFERRER, "HealthcareService/stroke-association-support").await;
    for (path, tag, before) in held {
        let after = app.send("GET", Some(STROKE), path, None, &[("If-None-Match", &tag)]).await;
        assert_eq!(after.status, 200, "{path}: a new referral since");
        assert_ne!(after.header("etag"), Some(tag.as_str()));
        let entries = |b: &serde_json::Value| b["entry"].as_array().map_or(0, Vec::len);
        assert!(entries(&after.body) > entries(&before), "{path}: the new referral is in the answer");
    }
}
