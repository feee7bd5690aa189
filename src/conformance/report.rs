//! The kit's reports: a line per scenario on the terminal, JUnit XML for CI, an HTML page for
//! people and JSON for tools. Every scenario names its requirement (the catalogue) and the HTTP
//! exchanges it made (method, path, who, status; never bodies, which hold test patient data).

use serde_json::{Value, json};

use super::catalogue::requirement;

/// One HTTP exchange of a scenario.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub method: String,
    pub path: String,
    pub who: String,
    pub status: u16,
    /// The response's resource type (and an OperationOutcome's issue codes).
    pub summary: String,
}

impl Exchange {
    fn line(&self) -> String {
        format!("{} {} as {} -> {} {}", self.method, self.path, self.who, self.status, self.summary)
            .trim_end()
            .to_string()
    }
}

/// A scenario's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Failed(String),
    Skipped(String),
}

impl Outcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Failed(_) => "failed",
            Outcome::Skipped(_) => "skipped",
        }
    }

    fn message(&self) -> &str {
        match self {
            Outcome::Passed => "",
            Outcome::Failed(m) | Outcome::Skipped(m) => m,
        }
    }
}

/// One scenario's result.
#[derive(Debug, Clone)]
pub struct ScenarioResult {
    pub id: &'static str,
    pub outcome: Outcome,
    pub ms: u64,
    pub exchanges: Vec<Exchange>,
}

fn count(results: &[ScenarioResult], what: &str) -> usize {
    results.iter().filter(|r| r.outcome.as_str() == what).count()
}

/// The terminal report.
pub fn text(results: &[ScenarioResult]) -> String {
    let mut out = String::new();
    for r in results {
        let req = requirement(r.id);
        let mark = match r.outcome {
            Outcome::Passed => "PASS",
            Outcome::Failed(_) => "FAIL",
            Outcome::Skipped(_) => "SKIP",
        };
        out.push_str(&format!("{mark} {:<15} {}\n", r.id, req.title));
        if !matches!(r.outcome, Outcome::Passed) {
            out.push_str(&format!("     {}\n", r.outcome.message()));
        }
        if matches!(r.outcome, Outcome::Failed(_)) {
            out.push_str(&format!("     expected: {}\n", req.expected));
            for e in &r.exchanges {
                out.push_str(&format!("     {}\n", e.line()));
            }
        }
    }
    out.push_str(&format!(
        "{} passed, {} failed, {} skipped\n",
        count(results, "passed"),
        count(results, "failed"),
        count(results, "skipped")
    ));
    out
}

/// The JSON report.
pub fn json(base_url: &str, results: &[ScenarioResult]) -> Value {
    json!({
        "tool": "signpost conformance",
        "version": env!("CARGO_PKG_VERSION"),
        "baseUrl": base_url,
        "summary": {
            "passed": count(results, "passed"),
            "failed": count(results, "failed"),
            "skipped": count(results, "skipped"),
        },
        "results": results.iter().map(|r| {
            let req = requirement(r.id);
            json!({
                "id": r.id,
                "suite": req.suite.as_str(),
                "title": req.title,
                "section": req.section,
                "expected": req.expected,
                "outcome": r.outcome.as_str(),
                "message": r.outcome.message(),
                "ms": r.ms,
                "exchanges": r.exchanges.iter().map(|e| json!({
                    "method": e.method, "path": e.path, "as": e.who, "status": e.status, "summary": e.summary
                })).collect::<Vec<_>>(),
            })
        }).collect::<Vec<_>>(),
    })
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&apos;")
}

/// The JUnit XML report: one testsuite per suite, one testcase per requirement.
pub fn junit(results: &[ScenarioResult]) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let total_ms: u64 = results.iter().map(|r| r.ms).sum();
    out.push_str(&format!(
        "<testsuites name=\"signpost conformance\" tests=\"{}\" failures=\"{}\" skipped=\"{}\" time=\"{:.3}\">\n",
        results.len(),
        count(results, "failed"),
        count(results, "skipped"),
        total_ms as f64 / 1000.0
    ));
    for suite in ["referrer", "charity"] {
        let mine: Vec<&ScenarioResult> = results.iter().filter(|r| requirement(r.id).suite.as_str() == suite).collect();
        if mine.is_empty() {
            continue;
        }
        let failed = mine.iter().filter(|r| matches!(r.outcome, Outcome::Failed(_))).count();
        let skipped = mine.iter().filter(|r| matches!(r.outcome, Outcome::Skipped(_))).count();
        out.push_str(&format!(
            "  <testsuite name=\"{suite}\" tests=\"{}\" failures=\"{failed}\" skipped=\"{skipped}\">\n",
            mine.len()
        ));
        for r in mine {
            let req = requirement(r.id);
            out.push_str(&format!(
                "    <testcase classname=\"signpost.conformance.{suite}\" name=\"{} {}\" time=\"{:.3}\">\n",
                r.id,
                xml(req.title),
                r.ms as f64 / 1000.0
            ));
            out.push_str(&format!(
                "      <properties><property name=\"requirement\" value=\"{}\"/><property name=\"section\" value=\"{}\"/></properties>\n",
                r.id,
                xml(req.section)
            ));
            let exchanges: Vec<String> = r.exchanges.iter().map(Exchange::line).collect();
            match &r.outcome {
                Outcome::Passed => {}
                Outcome::Failed(m) => out.push_str(&format!(
                    "      <failure message=\"{}\">expected: {}\n{}</failure>\n",
                    xml(m),
                    xml(req.expected),
                    xml(&exchanges.join("\n"))
                )),
                Outcome::Skipped(m) => out.push_str(&format!("      <skipped message=\"{}\"/>\n", xml(m))),
            }
            out.push_str("    </testcase>\n");
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

/// The HTML report.
pub fn html(base_url: &str, results: &[ScenarioResult]) -> String {
    let mut rows = String::new();
    for r in results {
        let req = requirement(r.id);
        let exchanges: Vec<String> = r.exchanges.iter().map(|e| xml(&e.line())).collect();
        rows.push_str(&format!(
            "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}<br><small>{}</small></td><td>{}</td><td><b>{}</b><br>{}</td><td><details><summary>{} request(s)</summary><pre>{}</pre></details></td></tr>\n",
            r.outcome.as_str(),
            r.id,
            req.suite.as_str(),
            xml(req.title),
            xml(req.expected),
            xml(req.section),
            r.outcome.as_str(),
            xml(r.outcome.message()),
            r.exchanges.len(),
            exchanges.join("\n")
        ));
    }
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Signpost conformance report</title>\n<style>\
body{{font-family:system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse;width:100%}}\
td,th{{border:1px solid #ccc;padding:.4em;vertical-align:top;text-align:left}}\
tr.passed td:nth-child(5){{background:#e6f4ea}}tr.failed td:nth-child(5){{background:#fce8e6}}\
tr.skipped td:nth-child(5){{background:#f1f3f4}}pre{{white-space:pre-wrap;margin:0}}</style></head>\n<body>\n\
<h1>Signpost conformance report</h1>\n<p>{} — <b>{} passed</b>, <b>{} failed</b>, {} skipped.</p>\n\
<table><thead><tr><th>requirement</th><th>suite</th><th>what is checked</th><th>PRODUCT.md</th><th>result</th><th>exchanges</th></tr></thead>\n<tbody>\n{}</tbody></table>\n</body></html>\n",
        xml(base_url),
        count(results, "passed"),
        count(results, "failed"),
        count(results, "skipped"),
        rows
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn results() -> Vec<ScenarioResult> {
        vec![
            ScenarioResult { id: "REF-AUTH-01", outcome: Outcome::Passed, ms: 3, exchanges: vec![] },
            ScenarioResult {
                id: "CH-FOREIGN-01",
                outcome: Outcome::Failed("another charity reading the Task got 200 <&>".into()),
                ms: 5,
                exchanges: vec![Exchange {
                    method: "GET".into(),
                    path: "/fhir/Task/1".into(),
                    who: "other charity".into(),
                    status: 200,
                    summary: "Task".into(),
                }],
            },
            ScenarioResult {
                id: "CH-WEBHOOK-01",
                outcome: Outcome::Skipped("needs --operator-key".into()),
                ms: 0,
                exchanges: vec![],
            },
        ]
    }

    #[test]
    fn junit_counts_and_escapes_failures() {
        let x = junit(&results());
        assert!(x.contains("tests=\"3\" failures=\"1\" skipped=\"1\""), "{x}");
        assert!(x.contains("<failure message=\"another charity reading the Task got 200 &lt;&amp;&gt;\">"), "{x}");
        assert!(x.contains("GET /fhir/Task/1 as other charity -&gt; 200 Task"), "{x}");
        assert!(x.contains("<skipped message=\"needs --operator-key\"/>"));
        assert_eq!(x.matches("<testcase ").count(), 3);
    }

    #[test]
    fn json_and_html_carry_every_result_with_its_requirement() {
        let j = json("http://x", &results());
        assert_eq!(j["summary"], json!({ "passed": 1, "failed": 1, "skipped": 1 }));
        assert_eq!(j["results"][1]["section"], "§7 Security and privacy");
        let h = html("http://x", &results());
        assert!(h.contains("<tr class=\"failed\"><td>CH-FOREIGN-01</td>") && h.contains("&lt;&amp;&gt;"));
    }
}
