//! The change feed (`GET /fhir/$changes`): every change a client may see, in commit order, with
//! a cursor that never skips a change that commits late.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;

/// Follow `next` from `cursor` until it stays put: (sequence, `Type/id`, version) of each entry,
/// and the final cursor.
async fn read_feed(app: &TestApp, key: &str, mut cursor: i64) -> (Vec<(i64, String, String)>, i64) {
    let mut out = Vec::new();
    for _ in 0..200 {
        let page = app.get(key, &format!("/fhir/$changes?cursor={cursor}&_count=100")).await;
        assert_eq!(page.status, 200, "{}", page.body);
        assert_eq!(page.body["type"], "history");
        let entries = page.body["entry"].as_array().cloned().unwrap_or_default();
        for e in &entries {
            let seq: i64 = e["extension"][0]["valueString"].as_str().unwrap().parse().unwrap();
            let r = &e["resource"];
            out.push((
                seq,
                format!("{}/{}", r["resourceType"].as_str().unwrap(), r["id"].as_str().unwrap()),
                r["meta"]["versionId"].as_str().unwrap().to_string(),
            ));
        }
        let next = page.body["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next").unwrap()["url"]
            .as_str()
            .unwrap()
            .to_string();
        let next_cursor: i64 = next.split("cursor=").nth(1).unwrap().split('&').next().unwrap().parse().unwrap();
        assert!(next_cursor >= cursor, "the cursor never goes back");
        if next_cursor == cursor {
            assert!(entries.is_empty(), "a page that shows changes moves the cursor");
            return (out, cursor);
        }
        cursor = next_cursor;
    }
    panic!("the feed did not end");
}

#[tokio::test]
async fn the_feed_lists_every_visible_change_once_in_order() {
    let app = spawn().await;
    let (_, start) = read_feed(&app, STROKE, 0).await;
    let (sr, pid) = app.referral(REFERRER, "HealthcareService/stroke-association-support").await;
    let (other_sr, other_pid) = app.referral(REFERRER_2, "HealthcareService/befriending-network-leeds-support").await;
    let task = app.tasks_of(STROKE, &sr).await[0]["id"].as_str().unwrap().to_string();
    let accepted = app
        .patch(
            STROKE,
            &format!("/fhir/Task/{task}"),
            &serde_json::json!([{ "op": "replace", "path": "/status", "value": "accepted" }]),
            None,
        )
        .await;
    assert_eq!(accepted.status, 200);

    let (seen, end) = read_feed(&app, STROKE, start).await;
    let seqs: Vec<i64> = seen.iter().map(|s| s.0).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order, once: {seqs:?}");
    assert!(end > start);
    let names: Vec<String> = seen.iter().map(|s| format!("{}@{}", s.1, s.2)).collect();
    for want in [
        format!("Task/{task}@1"),
        format!("Task/{task}@2"),
        format!("ServiceRequest/{sr}@1"),
        format!("Patient/{pid}@1"),
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    for foreign in [format!("ServiceRequest/{other_sr}"), format!("Patient/{other_pid}")] {
        assert!(!names.iter().any(|n| n.starts_with(&foreign)), "{foreign} leaked to the charity");
    }
    // The operator sees everything; a referrer only its own.
    let (all, _) = read_feed(&app, OPERATOR, start).await;
    assert!(all.len() > seen.len());
    let (theirs, _) = read_feed(&app, REFERRER_2, start).await;
    assert!(theirs.iter().any(|t| t.1 == format!("ServiceRequest/{other_sr}")));
    assert!(!theirs.iter().any(|t| t.1 == format!("ServiceRequest/{sr}")));
    // Bad cursors are refused.
    app.get(STROKE, "/fhir/$changes?cursor=-1").await.assert_outcome(400, "bad-search-value");
    app.get(STROKE, "/fhir/$changes?since=2024").await.assert_outcome(400, "bad-search-value");
}

#[tokio::test]
async fn a_change_that_commits_late_is_never_skipped() {
    let app = spawn().await;
    let (_, cursor) = read_feed(&app, OPERATOR, 0).await;
    // Another writer holds the next change number (PostgreSQL: the counter row; SQLite: the
    // write lock) and has not committed.
    let lock = WriteLock::hold(&app.db_url);
    let writer = {
        let http = app.http.clone();
        let url = format!("{}/fhir/Patient", app.base);
        tokio::spawn(async move {
            http.post(url)
                .bearer_auth(REFERRER)
                .header("Content-Type", "application/fhir+json")
                .body(patient().to_string())
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A poller meanwhile sees nothing new and keeps its cursor.
    let (none, same) = read_feed(&app, OPERATOR, cursor).await;
    assert!(none.is_empty(), "{none:?}");
    assert_eq!(same, cursor);
    lock.release();
    let created = writer.await.unwrap();
    // From the same cursor, the late change is there.
    let (late, _) = read_feed(&app, OPERATOR, cursor).await;
    assert_eq!(late.len(), 1, "{late:?}");
    assert_eq!(late[0].1, format!("Patient/{}", created["id"].as_str().unwrap()));
    assert_eq!(late[0].0, cursor + 1, "numbers have no gaps");
}

/// A page reads a bounded number of changes: a charity that may see few of those after its
/// cursor gets short or empty pages whose cursor moves past the rest (it does not read them all
/// again at every poll), and following `next` shows the same changes, once each, as one read of
/// everything would.
#[tokio::test]
async fn a_quiet_charitys_cursor_moves_past_the_changes_it_may_not_see() {
    let app = spawn().await;
    let (_, start) = read_feed(&app, BEFRIENDING, 0).await;
    for _ in 0..3 {
        app.referral(REFERRER, "HealthcareService/stroke-association-support").await;
    }
    let last = signpost::store::changes::last(&mut app.pool.get().unwrap()).unwrap();
    assert!(last > start);
    let page = app.get(BEFRIENDING, &format!("/fhir/$changes?cursor={start}&_count=100")).await;
    assert_eq!(page.status, 200);
    assert!(page.body["entry"].as_array().is_none_or(Vec::is_empty), "{}", page.body);
    let next = page.body["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next").unwrap()["url"].clone();
    assert!(next.as_str().unwrap().contains(&format!("cursor={last}&")), "{next}");

    // One of its own among others' referrals, read a few changes at a time.
    let (own, _) = app.referral(REFERRER_2, "HealthcareService/befriending-network-leeds-support").await;
    for _ in 0..2 {
        app.referral(REFERRER, "HealthcareService/stroke-association-support").await;
    }
    let public = ["Organization", "HealthcareService", "Endpoint"];
    let mut conn = app.pool.get().unwrap();
    for visible in [Some("befriending-network-leeds"), Some("stroke-association"), None] {
        let everything = signpost::store::changes::page(&mut conn, 0, 100_000, visible, &public, 100_000).unwrap();
        let mut walked = Vec::new();
        let (mut cursor, mut empty_but_moved) = (0, 0);
        loop {
            let page = signpost::store::changes::page(&mut conn, cursor, 2, visible, &public, 3).unwrap();
            assert!(page.changes.len() <= 2 && page.next >= cursor);
            if page.next == cursor {
                assert!(page.changes.is_empty());
                break;
            }
            empty_but_moved += usize::from(page.changes.is_empty());
            walked.extend(page.changes.iter().map(|c| c.seq));
            cursor = page.next;
        }
        assert_eq!(walked, everything.changes.iter().map(|c| c.seq).collect::<Vec<_>>(), "{visible:?}");
        assert_eq!(everything.next, signpost::store::changes::last(&mut conn).unwrap());
        if visible == Some("befriending-network-leeds") {
            assert!(empty_but_moved > 0, "others' changes made no empty page");
            assert!(everything.changes.iter().any(|c| c.resource_id == own), "its own referral is in its feed");
        }
    }
}
