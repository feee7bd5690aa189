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
    /// Print the catalogue of Signpost issue codes (Markdown, or a FHIR CodeSystem with --fhir).
    IssueCodes {
        #[arg(long)]
        fhir: bool,
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
    let mut settings = load_settings(&cli)?;
    match cli.command {
        Command::Serve { port, log_format } => {
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
            let loaded = crate::gateway::directory::load_files(
                &pool,
                &files,
                settings.allow_loopback_webhooks(),
                crate::gateway::directory::Overwrite::Yes,
            )?;
            println!(
                "{} file(s): {} created, {} updated, {} unchanged",
                files.len(),
                loaded.created,
                loaded.updated,
                loaded.unchanged
            );
            Ok(())
        }
        Command::Validate { .. } => unreachable!("handled before the settings are loaded"),
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
