//! The conformance kit (PRODUCT.md §10): black-box scenarios against any Signpost deployment,
//! as a referrer and as a charity, each tied to a requirement in [`catalogue::CATALOGUE`], with
//! terminal, JUnit XML, HTML and JSON reports; and both sides of the webhook contract:
//! [`receiver`] (a charity endpoint that verifies signatures) and [`webhook`] (probes of a
//! charity's own receiver).

pub mod catalogue;
pub mod kit;
pub mod receiver;
pub mod report;
pub mod webhook;

use std::path::PathBuf;

use catalogue::Suite;
use kit::{Kit, KitOptions};
use report::Outcome;

/// Where to write the reports.
#[derive(Debug, Default, Clone)]
pub struct ReportFiles {
    pub junit: Option<PathBuf>,
    pub html: Option<PathBuf>,
    pub json: Option<PathBuf>,
}

/// `--suite` as a list.
pub fn suites(name: &str) -> anyhow::Result<Vec<Suite>> {
    match name {
        "referrer" => Ok(vec![Suite::Referrer]),
        "charity" => Ok(vec![Suite::Charity]),
        "all" => Ok(vec![Suite::Referrer, Suite::Charity]),
        _ => anyhow::bail!("--suite must be referrer, charity or all"),
    }
}

/// Run the kit, print its report, write the report files; true when nothing failed.
pub async fn run(opts: KitOptions, files: &ReportFiles) -> anyhow::Result<bool> {
    let base = opts.base_url.clone();
    let results = Kit::new(opts).run().await;
    print!("{}", report::text(&results));
    if let Some(p) = &files.junit {
        std::fs::write(p, report::junit(&results)).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
    }
    if let Some(p) = &files.html {
        std::fs::write(p, report::html(&base, &results)).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
    }
    if let Some(p) = &files.json {
        let text = serde_json::to_string_pretty(&report::json(&base, &results))?;
        std::fs::write(p, text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
    }
    Ok(!results.iter().any(|r| matches!(r.outcome, Outcome::Failed(_))))
}

/// The catalogue as a Markdown table (`signpost conformance --list`).
pub fn catalogue_markdown() -> String {
    let mut out = String::from(
        "| requirement | suite | what is checked | PRODUCT.md | expected exchange |\n|---|---|---|---|---|\n",
    );
    for r in catalogue::CATALOGUE {
        out.push_str(&format!("| {} | {} | {} | {} | {} |\n", r.id, r.suite.as_str(), r.title, r.section, r.expected));
    }
    out
}
