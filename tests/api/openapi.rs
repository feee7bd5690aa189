//! `GET /openapi.json`: the OpenAPI 3.1 description integrators generate clients from. It must
//! list exactly the routes the server answers.

use crate::helpers::*;

#[tokio::test]
async fn the_openapi_document_lists_every_route_and_only_real_ones() {
    let app = spawn().await;
    let r = app.http.get(format!("{}/openapi.json", app.base.trim_end_matches("/fhir"))).send().await.unwrap();
    assert_eq!(r.status(), 200, "served without a key");
    let doc: serde_json::Value = r.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    let mut ids = Vec::new();
    for (path, methods) in paths {
        for (method, op) in methods.as_object().unwrap() {
            ids.push(op["operationId"].as_str().unwrap().to_string());
            if !path.starts_with("/fhir/") || path == "/fhir/metadata" {
                continue;
            }
            // Every documented operation is routed: a concrete call never meets "unknown path"
            // or "method not allowed" (an auth-free call gets 401, a wrong body 4xx, never those).
            let ty = op["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == "type")
                .map(|p| p["schema"]["enum"][0].as_str().unwrap().to_string())
                .unwrap_or_default();
            let concrete = path.replace("{type}", &ty).replace("{id}", "x").replace("{vid}", "1");
            let url = format!("{}{}", app.base.trim_end_matches("/fhir"), concrete);
            let resp = app
                .http
                .request(method.to_uppercase().parse().unwrap(), &url)
                .bearer_auth(OPERATOR)
                .header(
                    "Content-Type",
                    if method == "patch" { "application/json-patch+json" } else { "application/fhir+json" },
                )
                .body("{}")
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap();
            assert!(status != 405 && !body.contains("unknown-path"), "{method} {path}: {status} {body}");
        }
    }
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "operationIds are unique");
    // And every route of the server is documented (a sample of each kind).
    for (path, method) in [
        ("/fhir/{type}", "post"),
        ("/fhir/{type}/{id}", "patch"),
        ("/fhir/$process-message", "post"),
        ("/fhir/{type}/{id}/$timeline", "get"),
        ("/fhir/{type}/{id}/$outcome-summary", "get"),
        ("/fhir/$changes", "get"),
        ("/fhir", "post"),
    ] {
        assert!(paths[path][method].is_object(), "{method} {path} missing");
    }
    assert_eq!(
        paths["/fhir/$process-message"]["post"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["required"] == true && p["in"] == "header")
            .count(),
        2,
        "X-Request-Id and X-Correlation-Id are required on messages"
    );
}
