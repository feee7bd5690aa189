//! The `signpost` command line: `serve`, `worker`, `migrate`, `client add|list|revoke|set-role`,
//! `directory import`, `validate`, `issue-codes`. Nothing is read from the working folder unless named: the
//! configuration comes from `--config` (or `SIGNPOST_CONFIG`) and the environment only.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::app::{self, Application};
use crate::auth::{self, Role};
use crate::config::{LogFormat, Settings};
use crate::store::clients;

#[derive(Parser, Debug)]
#[command(name = "signpost", version, about = "FHIR R4 referral gateway between care and charities")]
pub struct Cli {
    /// TOML configuration file (production mode unless it says otherwise). Without one,
    /// Signpost runs as a sandbox.
    #[arg(long, global = true, env = "SIGNPOST_CONFIG")]
    config: Option<PathBuf>,
    /// Database URL (sqlite://PATH or postgres://...), overriding the configuration.
    #[arg(long, global = true)]
    database: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Run as a sandbox (the example directory, the public sandbox keys and the simulated
        /// charities), whatever the configuration file says about the mode; refused with a
        /// configuration file in production mode (a file's default).
        #[arg(long)]
        sandbox: bool,
        /// Port to listen on (overrides server.port).
        #[arg(long)]
        port: Option<u16>,
        /// Log format: text or json (overrides log.format).
        #[arg(long)]
        log_format: Option<String>,
    },
    /// Run the webhook delivery worker alone (as `serve` does inside), sharing the outbox with
    /// any number of other workers and servers on the same database.
    Worker,
    /// Run the database migrations and exit.
    Migrate,
    /// Manage API clients.
    Client {
        #[command(subcommand)]
        command: ClientCommand,
    },
    /// Validate FHIR JSON files offline (a file, a folder of *.json, or - for standard input);
    /// exits non-zero when any has errors.
    Validate {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Print one JSON OperationOutcome per file instead of text.
        #[arg(long)]
        json: bool,
        /// Check against base R4 only, without Signpost's profiles and referral rules (for
        /// resources that are not referrals, such as the official R4 examples).
        #[arg(long)]
        base_only: bool,
        /// Also validate against the profiles in these files or folders (StructureDefinitions,
        /// ValueSets, CodeSystems, an ImplementationGuide's global profiles); repeatable.
        #[arg(long)]
        ig: Vec<PathBuf>,
    },
    /// Manage the directory of charity services.
    Directory {
        #[command(subcommand)]
        command: DirectoryCommand,
    },
    /// The conformance kit: black-box scenarios against a Signpost deployment (exit 1 on any
    /// failure), or one side of the webhook contract (`receiver`, `webhook`).
    #[command(args_conflicts_with_subcommands = true)]
    Conformance {
        #[command(subcommand)]
        mode: Option<ConformanceMode>,
        #[command(flatten)]
        kit: Box<KitArgs>,
    },
    /// Print the catalogue of Signpost issue codes (Markdown, or a FHIR CodeSystem with --fhir).
    IssueCodes {
        #[arg(long)]
        fhir: bool,
    },
}

#[derive(clap::Args, Debug)]
struct KitArgs {
    /// The deployment's root URL (without /fhir), e.g. http://127.0.0.1:8080.
    #[arg(long)]
    base_url: Option<String>,
    /// A referrer's API key.
    #[arg(long, env = "SIGNPOST_CONFORMANCE_KEY")]
    key: Option<String>,
    /// A charity's API key (the charity suite).
    #[arg(long)]
    charity_key: Option<String>,
    /// The Organization id that charity acts for.
    #[arg(long, default_value = "stroke-association")]
    charity_org: String,
    /// Another charity's API key (CH-FOREIGN-01: it must not see the first charity's Task).
    #[arg(long)]
    other_charity_key: Option<String>,
    /// An operator's API key (CH-WEBHOOK-01 adds a temporary Endpoint for the charity, pointed
    /// at the kit's receiver, and turns it off afterwards).
    #[arg(long)]
    operator_key: Option<String>,
    /// A SNOMED CT condition the deployment's directory routes (REF-ROUTE-01).
    #[arg(long, default_value = "230690007")]
    condition: String,
    /// referrer, charity or all.
    #[arg(long, default_value = "all")]
    suite: String,
    /// The address the deployment reaches the kit's webhook receiver at.
    #[arg(long, default_value = "127.0.0.1")]
    receiver_host: String,
    /// Seconds to wait for asynchronous results (cascades, webhooks).
    #[arg(long, default_value_t = 20)]
    wait: u64,
    /// Write a JUnit XML report here.
    #[arg(long)]
    junit: Option<PathBuf>,
    /// Write an HTML report here.
    #[arg(long)]
    html: Option<PathBuf>,
    /// Write a JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Print the requirement catalogue (Markdown) and exit.
    #[arg(long)]
    list: bool,
}

#[derive(Subcommand, Debug)]
enum ConformanceMode {
    /// Act as a charity's webhook endpoint: verify each request's Standard Webhooks signature
    /// (401 when it does not verify) and print what arrived.
    Receiver {
        #[arg(long)]
        port: u16,
        /// The Endpoint's secret (whsec_...).
        #[arg(long, env = "WEBHOOK_SECRET")]
        secret: String,
        /// Exit after this many verified events (exit 1 if any request was refused).
        #[arg(long)]
        count: Option<usize>,
    },
    /// Test a charity's own receiver: send a correctly signed event and forged, altered and
    /// replayed ones; exit 1 if it accepted a bad one or refused the good one.
    Webhook {
        #[arg(long)]
        url: String,
        /// The secret the receiver verifies with (whsec_...).
        #[arg(long, env = "WEBHOOK_SECRET")]
        secret: String,
    },
}

#[derive(Subcommand, Debug)]
enum DirectoryCommand {
    /// Validate and load directory files (a folder of *.json, or one file: Bundles or single
    /// Organization, HealthcareService, Location and Endpoint resources). Every problem is
    /// reported at once and nothing is written unless all are valid.
    Import { path: PathBuf },
}

#[derive(Subcommand, Debug)]
enum ClientCommand {
    /// Register a client and print its new API key (shown once, never again).
    Add {
        #[arg(long)]
        name: String,
        /// referrer, charity or operator.
        #[arg(long)]
        role: String,
        /// The Organization id the client acts for (it must be in the directory).
        #[arg(long)]
        organization: String,
    },
    /// List the registered clients (name, role, Organization; never keys).
    List,
    /// Remove a client: its key stops working on every running instance within seconds.
    Revoke { name: String },
    /// Change a client's role (takes effect on every running instance within seconds).
    SetRole {
        name: String,
        /// referrer, charity or operator.
        role: String,
    },
}

fn load_settings(cli: &Cli) -> anyhow::Result<Settings> {
    let mut settings = Settings::load(cli.config.as_deref())?;
    if let Some(url) = &cli.database {
        settings.database.url = url.clone();
    }
    Ok(settings)
}

/// Run the command line; returns the process exit code.
pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Validate { paths, json, base_only, ig } = &cli.command {
        let invalid = crate::validate_cli::run(paths, *json, !*base_only, ig)?;
        if invalid > 0 {
            std::process::exit(2);
        }
        return Ok(());
    }
    if let Command::Conformance { mode, kit } = &cli.command {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        let ok = runtime.block_on(conformance(mode, kit))?;
        if !ok {
            std::process::exit(1);
        }
        return Ok(());
    }
    let mut settings = load_settings(&cli)?;
    match cli.command {
        Command::Serve { sandbox, port, log_format } => {
            if sandbox {
                if settings.mode == crate::config::RunMode::Production {
                    anyhow::bail!(
                        "--sandbox: this configuration runs in production mode, which never loads sandbox data or keys"
                    );
                }
                settings.sandbox.charities = true;
            }
            if let Some(p) = port {
                settings.server.port = p;
            }
            if let Some(f) = log_format {
                settings.log.format = match f.as_str() {
                    "json" => LogFormat::Json,
                    "text" => LogFormat::Text,
                    _ => anyhow::bail!("--log-format must be text or json"),
                };
            }
            crate::telemetry::init(&settings.log);
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(async move {
                let app = Application::build(settings).await?;
                app.run_until_stopped().await?;
                Ok(())
            })
        }
        Command::Worker => {
            crate::telemetry::init(&settings.log);
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(async move {
                let pool = app::open_database(&settings)?;
                let worker = crate::delivery::worker::Worker::new(
                    pool,
                    crate::delivery::worker::WorkerSettings::from_settings(&settings),
                    Default::default(),
                );
                tracing::info!("delivery worker running");
                tokio::select! {
                    _ = worker.run() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
                Ok(())
            })
        }
        Command::Migrate => {
            crate::telemetry::init(&settings.log);
            app::open_database(&settings)?;
            println!("migrations up to date");
            Ok(())
        }
        Command::Client { command } => client_command(&settings, command),
        Command::Directory { command: DirectoryCommand::Import { path } } => {
            crate::telemetry::init(&settings.log);
            let pool = app::open_database(&settings)?;
            let files = crate::gateway::directory::read_files(&path)?;
            let loaded =
                app::load_directory_files(&pool, &settings, &files, crate::gateway::directory::Overwrite::Yes)?;
            println!(
                "{} file(s): {} created, {} updated, {} unchanged",
                files.len(),
                loaded.created,
                loaded.updated,
                loaded.unchanged
            );
            Ok(())
        }
        Command::Validate { .. } | Command::Conformance { .. } => {
            unreachable!("handled before the settings are loaded")
        }
        Command::IssueCodes { fhir } => {
            if fhir {
                println!("{}", serde_json::to_string_pretty(&crate::fhir::outcome::catalogue_codesystem())?);
            } else {
                print!("{}", crate::fhir::outcome::catalogue_markdown());
            }
            Ok(())
        }
    }
}

/// `signpost conformance ...`; true when everything passed.
async fn conformance(mode: &Option<ConformanceMode>, kit: &KitArgs) -> anyhow::Result<bool> {
    use crate::conformance::{self, ReportFiles, kit::KitOptions};
    match mode {
        Some(ConformanceMode::Receiver { port, secret, count }) => {
            let (_, refused) = conformance::receiver::run(*port, secret.clone(), *count).await?;
            Ok(refused == 0)
        }
        Some(ConformanceMode::Webhook { url, secret }) => {
            Ok(conformance::webhook::print(&conformance::webhook::probe(url, secret).await?))
        }
        None if kit.list => {
            print!("{}", conformance::catalogue_markdown());
            Ok(true)
        }
        None => {
            let (Some(base_url), Some(key)) = (&kit.base_url, &kit.key) else {
                anyhow::bail!("the kit needs --base-url and --key (a referrer's API key); see --help");
            };
            let opts = KitOptions {
                base_url: base_url.clone(),
                referrer_key: key.clone(),
                charity_key: kit.charity_key.clone(),
                charity_org: kit.charity_org.clone(),
                other_charity_key: kit.other_charity_key.clone(),
                operator_key: kit.operator_key.clone(),
                condition: kit.condition.clone(),
                suites: conformance::suites(&kit.suite)?,
                receiver_host: kit.receiver_host.clone(),
                wait_secs: kit.wait,
            };
            let files = ReportFiles { junit: kit.junit.clone(), html: kit.html.clone(), json: kit.json.clone() };
            conformance::run(opts, &files).await
        }
    }
}

fn parse_role(role: &str) -> anyhow::Result<Role> {
    Role::parse(role).ok_or_else(|| anyhow::anyhow!("the role must be referrer, charity or operator"))
}

fn client_command(settings: &Settings, command: ClientCommand) -> anyhow::Result<()> {
    let pool = app::open_database(settings)?;
    let mut conn = pool.get()?;
    match command {
        ClientCommand::Add { name, role, organization } => {
            let role = parse_role(&role)?;
            if !crate::fhir::is_valid_id(&organization) {
                anyhow::bail!("--organization must be an Organization id");
            }
            if crate::store::resources::get(&mut conn, "Organization", &organization)?.is_none() {
                anyhow::bail!(
                    "Organization/{organization} is not in the directory: add it to the directory first \
                     (the directory.path folder, or PUT /fhir/Organization/{organization} as an operator)"
                );
            }
            let key = auth::new_key();
            clients::insert(
                &mut conn,
                &clients::ClientRow {
                    id: uuid::Uuid::new_v4().to_string(),
                    name: name.clone(),
                    role: role.as_str().to_string(),
                    organization_id: organization,
                    key_hash: auth::hash_key(&key),
                    created_at: crate::fhir::now_ms(),
                },
            )
            .map_err(|e| match e {
                crate::store::StoreError::Unique => anyhow::anyhow!("a client named {name} already exists"),
                other => other.into(),
            })?;
            println!("{key}");
            eprintln!("client {name} registered; store this key now, it will not be shown again");
        }
        ClientCommand::List => {
            println!("{:<40} {:<9} organization", "name", "role");
            for c in clients::list(&mut conn)? {
                println!("{:<40} {:<9} {}", c.name, c.role, c.organization_id);
            }
        }
        ClientCommand::Revoke { name } => {
            if !clients::revoke(&mut conn, &name)? {
                anyhow::bail!("no client named {name}");
            }
            eprintln!("client {name} revoked; running instances refuse its key within {} seconds", auth::CACHE_SECS);
        }
        ClientCommand::SetRole { name, role } => {
            let role = parse_role(&role)?;
            if !clients::set_role(&mut conn, &name, role.as_str())? {
                anyhow::bail!("no client named {name}");
            }
            eprintln!(
                "client {name} is now a {}; running instances apply it within {} seconds",
                role.as_str(),
                auth::CACHE_SECS
            );
        }
    }
    Ok(())
}
